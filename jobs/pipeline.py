"""`ray job submit ... -- python jobs/pipeline.py CONFIG [key=value ...] [--until STAGE]`: every
stage in order; finished stages (same config hash) are skipped, so resubmitting resumes."""

import _entry  # this folder is sys.path[0] when run as a script

if __name__ == "__main__":  # guard: vLLM and DeepSpeed spawn subprocesses that re-import __main__
    _entry.run("run")
