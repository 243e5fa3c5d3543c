"""`ray job submit ... -- python jobs/serve.py CONFIG [key=value ...]`: deploy the refine-and-rerank
HTTP service on the cluster (Ray Serve; the job runs in the foreground until stopped)."""

import _entry  # this folder is sys.path[0] when run as a script

if __name__ == "__main__":  # guard: the engines spawn subprocesses that re-import __main__
    _entry.run("serve")
