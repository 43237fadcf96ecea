"""The pipeline's folders, relative to the repository root: the one home of these names.

`dvc.yaml` spells the same paths as its stages' outs and deps (tests/test_dvc_pipeline.py checks
that they agree); the CLI, the flows and the stages take their defaults from here.
"""
SOURCES = "data/sources"  # `source@N`: one fingerprint file per dataset
PREPARED = "data/prepared"  # `prepare`: raw_audio datasets as clips + metadata.jsonl, one folder each
INGEST = "data/ingest"
TEXT = "data/text"
BERT = "data/bert"
SPEC = "data/spec"
REPORTS = "reports"  # `stats`
RUN_RECORD = "train/run.json"
WAVEGLOW_RECORD = "train/waveglow.json"  # `waveglow`: the vocoder run (or that it is off)
ASR_RECORD = "train/asr.json"  # `asr`: the content encoder's run (or that it is off)
VC_RECORD = "train/vc.json"  # `vc`: the HiFi-VC run (or that it is off)
EVAL = "eval"
EXPORT = "export"  # the `export` stage: the judged checkpoint as a bundle + upstream format

# The four data stages' outs, as the training corpus (tasks.training.corpus.Corpus.open) takes them.
DATA_DIRS = {"ingest_dir": INGEST, "text_dir": TEXT, "bert_dir": BERT, "spec_dir": SPEC}
