"""What the Prefect flows need around `dvc repro`: the DVC remote and the workspace (lock, data
versions, new-data checks).
"""
