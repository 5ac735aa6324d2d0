"""raspicl's interpretability benchmark (docs/benchmark.md): compiled in-context learners whose
mechanism is known exactly, reference methods, and the scoring of any method's outputs.

    score(directory, outputs)   score an outside method (MethodOutputs) on a model directory or
                                its HuggingFace export alone
    task_for(directory)         the prompt pairs and variables score() uses
    run_benchmark(...)          the suite, the reference methods and the leaderboard

Layer 10, analysis and commands (docs/index.md, "The source, in layers"): it may import
every layer below, never raspicl.cli.
"""

from raspicl.benchmark.score import MethodOutputs, Scores, score, score_task, task_for

__all__ = ["MethodOutputs", "Scores", "run_benchmark", "score", "score_task", "task_for"]


def run_benchmark(*args, **kwargs):
    """raspicl.benchmark.suite.run_benchmark (imported on use)."""
    from raspicl.benchmark.suite import run_benchmark as run

    return run(*args, **kwargs)
