"""Delivery channels: in-app, email, webhook, web push, SMS (see ``base.Channel``)."""
