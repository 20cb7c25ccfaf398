"""Stand-in for modules/scripts.py (v1.10.1): only the postprocessing runner, whose scripts Extras runs (the
host names its job after each as it runs it). ``None`` until the host loads its scripts."""
scripts_postproc = None
