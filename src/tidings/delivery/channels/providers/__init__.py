"""The providers behind the ``email`` and ``sms`` channels, tried in a configured order.

``base.py``: :class:`Provider` and :func:`send_in_order` (failover, each try a note of the
delivery's history); ``http.py``: the HTTP client the API providers share; ``smtp.py``,
``ses.py`` (Amazon SES v2), ``postmark.py`` for email; ``twilio.py`` for SMS; ``sns.py``
(verifying Amazon SNS messages) and ``callbacks.py`` (the providers' inbound events, as the
``/providers/...`` routes hand them over).
"""
