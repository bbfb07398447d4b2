"""Lambda layer build (``layers/build.py``); imported by the CDK app's local bundling."""
