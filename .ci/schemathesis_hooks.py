# Schemathesis hooks for .ci/api-contract (loaded through SCHEMATHESIS_HOOKS).
#
# PEM bodies are `application/x-pem-file` only: the admin API no longer takes them as
# `text/plain`, which a browser sends cross-site without asking (issue 18). PEM is text,
# so schemathesis sends it with its text serializer.
import schemathesis

schemathesis.serializer.alias("application/x-pem-file", "text/plain")
