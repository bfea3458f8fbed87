"""`python -m services.reviews`: run the review service.

`python -m services.reviews relay-rewind --to N` publishes its events after N again
(docs/operations.md).
"""

from services.reviews.application import ReviewsApplication
from services.reviews.main import ReviewsSettings, create_app
from shared.serve import main

if __name__ == "__main__":
    main(ReviewsSettings, create_app, ReviewsApplication)
