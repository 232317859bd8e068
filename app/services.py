"""The AWS services the job makes clients for, and so the only ones whose botocore
data the image keeps (`docker/trim-image.py`). A test derives the list from the code
(every `.client("...")`) and holds this one to it."""

SERVICES = ("ecs", "logs", "rds", "secretsmanager", "stepfunctions")
