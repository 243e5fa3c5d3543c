"""The rollout stage as a Ray job:
`ray job submit --working-dir . -- python jobs/rollout.py CONFIG [key=value ...] [--force]`."""

import _entry  # this folder is sys.path[0] when run as a script

if __name__ == "__main__":  # guard: vLLM and DeepSpeed spawn subprocesses that re-import __main__
    _entry.run("rollout")
