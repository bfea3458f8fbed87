"""`python -m services.projections`: run the projections service."""

from services.projections.main import ProjectionsSettings, create_app
from shared.serve import serve

if __name__ == "__main__":
    serve(ProjectionsSettings, create_app)
