"""Start one torchrun (or DeepSpeed launcher) per node, stream every rank's output, name the first failure.

    from orchestrator.launch.plan import LaunchSpec, build_plan      # pure: what would run where
    from orchestrator.launch.runner import run_plan                  # act: start it over the remote layer

Modules: plan (LaunchSpec -> LaunchPlan), env (env manifest + redaction), torchrun / deepspeed (per-node argv),
rundir (run ids, runs/<run_id>/ layout), failures (root-cause analysis), runner (execution + teardown),
demo (the README's main job), examples/allreduce (the job it runs).
"""
