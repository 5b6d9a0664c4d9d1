"""Train, evaluate, export and publish the human parser of :mod:`smis.parsing`
(``python -m train.human_parser``; docs/PARSER.md).

One GPU, in chunks under 10 minutes (rerun the same command until it says the run is complete)::

    python -m train.human_parser --data .gpu/ccp384 --outdir runs/parser --resume auto --max-minutes 9

Several GPUs: ``torchrun --nproc_per_node 4 -m train.human_parser ...`` (same flags; ``--batch-size``
is the global batch). Evaluate a parser folder, or re-export its ONNX file::

    python -m train.human_parser --evaluate runs/parser/best --data .gpu/ccp384 --val-split val
    python -m train.human_parser --export-onnx runs/parser/best

Ship a finished run as a parser folder (best weights, ``model.onnx``, card with the per-class
IoU table, the exact command and the training curve)::

    python -m train.human_parser --publish runs/parser smis/assets/ccp-parser

The run folder holds ``parser_options.json``, ``log.jsonl`` (one JSON object per line: training
logs and validations), ``checkpoints/training-state-<step>.pt`` (resumable state written
atomically by :mod:`train.checkpoint`, loaded with ``weights_only=True``; the newest ``--keep``
are kept), ``best/`` (the best validation mIoU so far: ``config.json``, ``model.safetensors``,
``metrics.json``, a model card ``README.md`` and, at the end, ``model.onnx``) and ``final/`` (the
last weights).

The rooms: ``options.py`` (``ParserTrainOptions``, one flag per field), ``data.py`` (a split
decoded once into memory, each step's batch and its augmentation on the device), ``loop.py`` (the
loss and ``train``), ``evaluate.py`` (segmentation scores, ``--evaluate``), ``publish.py`` (parser
folders, the card, the curve, the full-body check's calibration, ``--publish``) and ``__main__.py``
(the command line).
"""
