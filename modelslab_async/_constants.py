"""Default endpoints, timeouts, retry and polling figures, in one place."""

from __future__ import annotations

DEFAULT_BASE_URL = "https://modelslab.com/api/v6"
ENV_API_KEY = "MODELSLAB_API_KEY"
ENV_BASE_URL = "MODELSLAB_BASE_URL"

SUBMIT_PATH = "/images/text2img"
FETCH_PATH = "/images/fetch/{id}"

# Timeouts (seconds).
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_TOTAL_TIMEOUT = 120.0

# Retries: exponential backoff with full jitter, capped.
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_INITIAL = 0.25
DEFAULT_BACKOFF_MAX = 8.0
DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 300.0

# Connection pool.
DEFAULT_POOL_LIMIT = 100
DEFAULT_POOL_LIMIT_PER_HOST = 64

# Client.
DEFAULT_MAX_IN_FLIGHT = 8
AUTO_INITIAL_IN_FLIGHT = 4  # max_in_flight="auto": the limit it starts from,
AUTO_MAX_IN_FLIGHT = 256  # the most it grows to,
AUTO_DECREASE_COOLDOWN = 1.0  # and the fewest seconds between two halvings.
AUTO_BATCH_WIDTH = 64  # generate_many's items in progress when the limit is learned
FINISHED_JOBS_KEPT = 4096  # resolved jobs a client remembers for a late wait()

# The largest API answer read (a real one is a few kB); a larger one is refused unparsed.
MAX_ANSWER_BYTES = 4 * 1024 * 1024

# Downloads.
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
#: Redirects a download follows (http(s) only, never from https to http).
MAX_DOWNLOAD_REDIRECTS = 3
#: The longest job-id part of an image's file name; a longer id is cut and given a hash.
MAX_FILE_STEM_ID = 100
DEFAULT_DOWNLOAD_NOT_READY_RETRIES = 8
DEFAULT_DOWNLOAD_CHUNK = 64 * 1024

# Request limits that the SDK enforces (stricter than the server, see Text2ImgRequest).
MAX_PROMPT_LENGTH = 10_000
MAX_TRACK_ID_LENGTH = 255
MAX_SEED = 2**32 - 1

# How much of an unexpected body an error message quotes.
EXCERPT_LENGTH = 200

USER_AGENT = "modelslab-async/{version}"

# Shared slots (RedisSlots, RaySlots): seconds a lease lives without renewal. Holders renew
# every lease / 3, so a lease survives two missed renewals.
DEFAULT_SLOT_LEASE = 30.0
MIN_SLOT_LEASE = 0.1
