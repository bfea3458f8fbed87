"""`python -m services.goals`: run the goals service."""

from services.goals.main import GoalsSettings, create_app
from shared.serve import serve

if __name__ == "__main__":
    serve(GoalsSettings, create_app)
