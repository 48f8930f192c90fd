"""The Faust application and the stage agents of our pipelines."""
