"""In-context learning experiments: train transformers on in-context linear regression, compare
them with learning algorithms, probe their hidden states, with compiled raspicl models as
controls whose algorithm is known exactly.

    tasks       the paper's prompt distribution (x ~ N(0, I), w ~ N(0, tau^2 I), noise sigma)
    predictor   the one interface every learner is measured through (trained, compiled, solver)

Layer 10, analysis and commands (docs/index.md, "The source, in layers"): it may import
every layer below, never raspicl.cli.
"""
