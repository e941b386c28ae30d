"""The code MLflow runs to load a job's model (models from code: nothing is unpickled); MLflow
copies this file into each model folder, and it imports the rest from the installed package."""

import mlflow.models

from benchmark.deploy.logged_model import PyfuncModel

mlflow.models.set_model(PyfuncModel())
