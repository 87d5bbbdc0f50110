"""``bso-snn eval RUN_DIR|CHECKPOINT``: the test accuracy of a saved model on its dataset.

What is loaded:

- ``RUN_DIR``: the final model (``model.bsosnn.pt``, or ``model.pt`` of the fp baseline) with the
  config from ``metrics.json``; a run without them (interrupted) is evaluated from ``checkpoint.pt``.
- ``CHECKPOINT``: a ``checkpoint.pt`` (it carries its config), or a packed ``model.bsosnn.pt`` /
  ``model.pt`` beside the ``metrics.json`` of its run.

The model is rebuilt exactly as ``bso-snn train`` built it and evaluated with the same code, so a
finished run reproduces the ``test_acc`` of its ``metrics.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .. import checkpoint
from ..data import DatasetChecksumError, DatasetNotFoundError
from . import runstate

MODEL_FILES = ("model.bsosnn.pt", "model.pt")


class EvalInputError(ValueError):
    """The path given to ``bso-snn eval`` cannot be evaluated; the message says why and what to pass."""


def _metrics(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvalInputError(
            f"{path} cannot be read as JSON ({exc}); pass the run's checkpoint.pt instead"
        ) from exc


def _source(path: Path) -> tuple[dict, Path, dict | None]:
    """``(config, model file, metrics or None)`` for ``path``."""
    if path.is_dir():
        metrics = _metrics(path)
        models = [path / name for name in MODEL_FILES if (path / name).is_file()]
        if metrics is not None and models:
            return metrics["config"], models[0], metrics
        if (path / runstate.CHECKPOINT).is_file():
            return _source(path / runstate.CHECKPOINT)
        raise EvalInputError(
            f"{path} holds neither a finished run (metrics.json and {' or '.join(MODEL_FILES)}) nor a "
            f"{runstate.CHECKPOINT}; pass a run folder written by bso-snn train"
        )
    if not path.is_file():
        raise EvalInputError(f"{path} does not exist; pass a run folder or a checkpoint file")
    if path.name in MODEL_FILES:
        metrics = _metrics(path.parent)
        if metrics is None:
            raise EvalInputError(
                f"{path} is a model file but {path.parent / 'metrics.json'} (which says how to build the "
                f"model) is missing; pass the run's {runstate.CHECKPOINT} instead"
            )
        return metrics["config"], path, metrics
    payload = runstate.load_run(path)
    return payload["config"], path, None


def _load_weights(model: torch.nn.Module, path: Path, packed: bool) -> None:
    if path.name == runstate.CHECKPOINT or not path.name.startswith("model"):
        model.load_state_dict(runstate.load_run(path)["model"])
    elif packed:
        checkpoint.load_packed(model, path)
    else:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def evaluate_path(path: str | Path, data_root: str | None = None, threads: int = 1, log=print) -> dict:
    """``{"test_acc", "config", "model_file", "metrics_test_acc"}`` for a run folder or checkpoint."""
    from ..data import CATALOG
    from .train import TrainConfig, _accuracy, build_setup

    config, model_file, metrics = _source(Path(path))
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise EvalInputError(
            f"{path}: its config has {unknown}, which bso-snn train with BSO/T-BSO/fp does not write "
            f"(a --method sbnn run?); bso-snn eval evaluates BSO/T-BSO/fp runs. Load an SBNN run's "
            f"model.pt with bso_snn.bayes instead"
        )
    cfg = TrainConfig(**config)
    if data_root is not None:
        cfg.data_root = data_root
    torch.set_num_threads(threads)
    setup = build_setup(cfg, log=lambda *_: None)
    _load_weights(setup.model, model_file, packed=setup.report is not None)
    temporal = CATALOG[cfg.dataset].temporal
    acc = _accuracy(setup.model, DataLoader(setup.test_set, batch_size=512), cfg.T, temporal)
    return {
        "test_acc": acc,
        "config": config,
        "model_file": str(model_file),
        "metrics_test_acc": metrics["test_acc"] if metrics else None,
    }


def run_eval(args: argparse.Namespace) -> int:
    from . import EXIT_CHECKPOINT, EXIT_DATA, EXIT_ECOSYSTEM, _error
    from .models import EcosystemMissingError

    threads = torch.get_num_threads()
    try:
        result = evaluate_path(args.path, args.data_root, args.threads)
    except (EvalInputError, runstate.RunCheckpointError) as exc:
        return _error(str(exc), EXIT_CHECKPOINT)
    except (DatasetNotFoundError, DatasetChecksumError) as exc:
        return _error(str(exc), EXIT_DATA)
    except EcosystemMissingError as exc:
        return _error(str(exc), EXIT_ECOSYSTEM)
    except (ValueError, RuntimeError) as exc:  # a model file that does not fit its config
        return _error(f"{args.path}: {exc}", EXIT_CHECKPOINT)
    finally:
        torch.set_num_threads(threads)
    cfg = result["config"]
    print(
        f"test accuracy {result['test_acc']:.4f}  ({cfg['dataset']} test set, T={cfg['T']}, "
        f"{result['model_file']})"
    )
    if result["metrics_test_acc"] is not None:
        same = result["test_acc"] == result["metrics_test_acc"]
        print(
            f"metrics.json  {result['metrics_test_acc']:.4f}  "
            + ("(identical)" if same else "(differs: another machine or library version?)"),
            file=sys.stdout,
        )
    return 0
