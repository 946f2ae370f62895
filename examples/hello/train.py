"""The script examples/hello.yaml runs on every rank: where it runs and which rank it is."""

import argparse
import os
import socket

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()
for step in range(args.steps):
    print(f"{socket.gethostname()} rank {os.environ['RANK']}/{os.environ['WORLD_SIZE']} step {step} in {os.getcwd()}",
          flush=True)
