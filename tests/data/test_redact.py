import pytest

from toolsel.data.redact import KINDS, redact

# One planted secret per kind (fake values of the real shapes), and the text that must remain around it.
PLANTED = {
    "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
    "anthropic_key": "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "stripe_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "openai_key": "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "gitlab_token": "glpat-AbCdEfGhIjKlMnOpQrSt",
    "slack_webhook": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
    "slack_token": "xoxb-123456789012-1234567890123-AbCdEfGhIjKl",
    "google_api_key": "AIzaSyA1234567890abcdefghijklmnopqrstuv",
    "huggingface_token": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456",
    "npm_token": "npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
}
# Kinds that keep a prefix: (text, expected output)
PREFIXED = {
    "bearer_token": ("curl -H 'Authorization: Bearer abcdef0123456789abcdef0123'",
                     "curl -H 'Authorization: Bearer [REDACTED:bearer_token]'"),
    "url_credentials": ("clone https://alice:s3cr3tpw@github.com/org/repo.git",
                        "clone https://[REDACTED:url_credentials]@github.com/org/repo.git"),
    "password": ("login with password=hunter2!! then", "login with password=[REDACTED:password] then"),
}

NEAR_MISSES = [
    "pip install scikit-learn; import sk-learn",
    "update the task-list and the risk-assessment",
    "set max_tokens=512 and num_tokens: 20",
    "the password field is empty: password: ",
    "export PGPASSWORD=$DB_PASSWORD",
    "password=<your password here>",
    "the secret is out, keep the keyboard",
    "AKIA1234 is too short, so is ghp_abc",
    "email me at bob@example.com or see https://example.com/a@b",
    "Bearer of bad news",
    "eyJ is how base64 JSON starts",
    "hf_hub_download(repo_id) and npm_config",
    "run pwd: /home/user/project",
]


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_each_planted_secret_is_redacted_and_counted(kind):
    text, counts = redact(f"please use {PLANTED[kind]} for the deploy")
    assert text == f"please use [REDACTED:{kind}] for the deploy"
    assert counts == {kind: 1}


@pytest.mark.parametrize("kind", sorted(PREFIXED))
def test_prefix_keeping_kinds(kind):
    source, expected = PREFIXED[kind]
    text, counts = redact(source)
    assert text == expected
    assert counts == {kind: 1}


def test_every_kind_is_tested():
    assert set(PLANTED) | set(PREFIXED) == set(KINDS)


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_left_alone(text):
    assert redact(text) == (text, {})


def test_quoted_assignments_and_several_secrets():
    text, counts = redact('api_key: "abc123xyz" and SECRET=\'s3cr3t value\' and AKIAIOSFODNN7EXAMPLE twice '
                          "AKIAIOSFODNN7EXAMPLE")
    assert text == ("api_key: [REDACTED:password] and SECRET=[REDACTED:password] and [REDACTED:aws_access_key] "
                    "twice [REDACTED:aws_access_key]")
    assert counts == {"password": 2, "aws_access_key": 2}


def test_specific_kind_wins_and_is_not_redacted_twice():
    text, counts = redact("OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012345")
    assert text == "OPENAI_API_KEY=[REDACTED:openai_key]"
    assert counts == {"openai_key": 1}


def test_truncated_private_key_block_is_redacted_to_the_end():
    text, counts = redact("key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA")
    assert text == "key:\n[REDACTED:private_key]"
    assert counts == {"private_key": 1}


@pytest.mark.parametrize("source, expected", [
    ("the db password is OSPMdU!0589c3h, connect and list the tables",
     "the db password is [REDACTED:password], connect and list the tables"),
    ("my password was hunter22.", "my password was [REDACTED:password]."),
    ("the passphrase is correct-horse-battery-staple", "the passphrase is [REDACTED:password]"),
])
def test_passwords_named_in_prose_are_redacted(source, expected):
    assert redact(source) == (expected, {"password": 1})


@pytest.mark.parametrize("text", ["the password is incorrect, reset it", "the password was changed yesterday",
                                  "password is required for this endpoint"])
def test_prose_about_passwords_without_one_is_left_alone(text):
    assert redact(text) == (text, {})
