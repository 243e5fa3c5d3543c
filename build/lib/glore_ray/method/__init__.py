"""The GLoRe method itself, with no Ray in it: the rules every stage and the server share.

    prefixes  which step prefixes are rolled out (every step but a final ``####`` line)
    labels    ORM/SORM step labels from rollouts, cleaning, quality against an oracle
    balance   the per-prefix-length balancing of SORM steps (from counts: streams)
    pairs     global and local refinement pairs reused from the rollouts
    budgeted  binary search for the first negative step instead of K rollouts everywhere
    decide    *when* (ORM), *where* (SORM), rerank: one threshold rule each
    solve     the refine-and-rerank graph over a batch of questions (Serve and evaluate)

The stage recipes (``glore_ray/stages``, on Ray) and the service (``glore_ray/serve``) call into
this package; nothing here imports Ray, so every rule is unit-tested on plain Python values.
"""
