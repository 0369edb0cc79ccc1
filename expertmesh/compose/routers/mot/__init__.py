"""Router type ``mot``: Mixture-of-Thoughts over a composition's experts (arXiv 2509.21164), a core router type.

    model.py     MoTConfig, MoTModel: the selector and the cross-expert interaction layers (the maths)
    router.py    the ``mot`` router type: router tensors, the runtime model MoTComposed, member subsets
    batch.py     MoTBatch: how the serving engine batches a ``mot`` composition's rows
    artifact.py  save_mot / read_mot_config and the FedAvg-able arrays of a trained MoT

Only training lives outside the core (router_training/mot_train.py, federated through router_training's apps).
Importing this package registers the router type.
"""
from expertmesh.compose.routers.mot import router as _router  # noqa: F401  (registers "mot")
