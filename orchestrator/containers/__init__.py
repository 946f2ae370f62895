"""Container images on the nodes: build a test image, sandbox docker daemons, `images load/ls/rm`, `launch --container`.

    from orchestrator.containers.image import build_test_image     # docker-archive from this machine's files
    from orchestrator.containers.daemon import start_docker        # one dockerd per sandbox host
    from orchestrator.containers.load import load_image            # relay the tar to every node's docker
    from orchestrator.containers.run import container_argv         # torchrun inside `docker run`
"""
