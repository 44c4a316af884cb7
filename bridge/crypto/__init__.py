"""End-to-end encryption (issue 11): the bot as a crypto-capable member of encrypted rooms.

transaction (to-device, device lists, OTK counts) → machine.Crypto → mautrix OlmMachine
inbox: m.room.encrypted → seams.Decrypting → decrypted event → dispatch
outbox: content for an encrypted room → Crypto.encrypt → m.room.encrypted → homeserver
"""
