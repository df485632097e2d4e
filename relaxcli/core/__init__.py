"""The method: the graph pass and its sites (:mod:`.graph`), branches (:mod:`.branches`), group representations
(:mod:`.reps`), the regularisers (:mod:`.regularizers`), the θ schedules (:mod:`.schedules`), the whole-model
equivariance measurement (:mod:`.symmetry`) and the projection (:mod:`.projection`).

Nothing here reads or writes files or knows about recipes: that is :mod:`relaxcli.run`.
"""
