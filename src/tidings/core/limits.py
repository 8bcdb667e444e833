"""Every limit of the wire contract and the HTTP API, defined once.

The settings (``TIDINGS_MAX_*``) are the limits an operator tunes; these are the ones a client
may rely on, so they are fixed. Each is enforced where the value enters (the codec, the HTTP
schemas, the facade) and named here so that every door agrees.
"""

from __future__ import annotations

#: characters in a user id (device tokens' ``sub``, HTTP bodies, the facade)
MAX_USER_ID_LENGTH = 256
#: characters in a notification id, a session id or a frame's ``id``
MAX_ID_LENGTH = 128
#: characters in a pipeline message's idempotency key (body field or ``Idempotency-Key``)
MAX_IDEMPOTENCY_KEY_LENGTH = 256
#: characters in a topic name
MAX_TOPIC_LENGTH = 200
#: characters in an access token presented on the socket
MAX_TOKEN_LENGTH = 8192
#: topic sequences are 64-bit signed integers in every store
MAX_SEQ = 2**63 - 1
#: notification ids in one ``markSeen`` or ``ack`` frame
MAX_IDS_PER_FRAME = 1000
#: topics in one ``subscribe`` frame
MAX_TOPICS_PER_FRAME = 100
#: notifications in a ``getUnseen`` answer when the client names no limit
DEFAULT_UNSEEN_LIMIT = 100
#: nesting of a notification's ``data`` (objects and arrays), at every door
MAX_DATA_DEPTH = 64
#: notifications in one ``POST /notify/batch``
MAX_BATCH_ITEMS = 10_000
#: characters in a channel's name (built-in or the application's)
MAX_CHANNEL_NAME_LENGTH = 64
#: channels one message is posted on
MAX_CHANNELS_PER_MESSAGE = 32
#: characters in a template id
MAX_TEMPLATE_ID_LENGTH = 128
#: bytes of a shared secret (device-token secret, service-token key)
MIN_SECRET_LENGTH = 32
#: count events and topic messages a node keeps to re-publish while the bus refuses them
MAX_UNPUBLISHED = 10_000
#: characters in a push token (APNs: 64 hex; FCM: ~160; Expo: ~45; room for growth)
MAX_PUSH_TOKEN_LENGTH = 4096
#: characters in a push token's ``app_id``
MAX_APP_ID_LENGTH = 256
#: push tokens one user may hold (a new one past this replaces the least recently used)
MAX_PUSH_TOKENS_PER_USER = 100

#: a page of a user's history holds at most this many notifications
MAX_HISTORY_PAGE = 100
#: a notification's category is at most this long
MAX_CATEGORY_LENGTH = 64
#: a history cursor is at most this long (the service's own are about 100 characters)
MAX_CURSOR_LENGTH = 512

#: the longest a message may wait before it is sent (a ``delay`` step), seconds: 90 days
MAX_DELAY_SECONDS = 90 * 24 * 3600
#: longest key of a message's digest step
MAX_DIGEST_KEY_LENGTH = 128
