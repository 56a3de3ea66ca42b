"""Regular expressions for messages the tests check in several places."""

# The end of a message whose library detail went to the log: `ortserve.errors.logged`.
LOGGED = r" \(correlation id [0-9a-f]{16}; details in the server log\)$"
