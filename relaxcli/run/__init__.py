"""Running the method on a recipe: building (:mod:`.build`), the trainer (:mod:`.trainer`) and the relaxation it
drives (:mod:`.relaxation`), distributed training (:mod:`.distributed`), the checkpoint format (:mod:`.checkpoint`),
the run log and reports (:mod:`.runlog`, :mod:`.reports`, :mod:`.progress`), evaluation metrics
(:mod:`.evaluation`), whole-model checks from the recipe (:mod:`.symmetry`), delivery (:mod:`.deliver`: project,
export) and inspection (:mod:`.inspect`). Files are written atomically (:mod:`.files`); run directories carry a
marker and a lock (:mod:`.rundir`).
"""
