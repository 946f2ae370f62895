"""The 3D-parallel training engine on PyTorch's own parallelism (DeviceMesh, DTensor TP, pipelining, FSDP2, DCP).

    $ torchrun --nproc-per-node 8 -m orchestrator.engine --config tiny --pp 2 --dp-shard 2 --tp 2 --steps 20

Modules: config (typed config + YAML sizes), parallel_dims (layout, mesh), model (the transformer),
parallelize (TP/AC/compile/FSDP2), pipeline (stages + schedules), steps (the step loop both engines share),
train (the torch engine), data, checkpoint (checkpoint_files: its torch-free completeness check), metrics,
heartbeat, deepspeed_engine (the ZeRO path). Importing this package imports no torch.
"""
