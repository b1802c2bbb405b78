"""A tiny DPO host (:mod:`.loop`) and its ganpo_plugins host adapter (:mod:`.adapter`)."""
