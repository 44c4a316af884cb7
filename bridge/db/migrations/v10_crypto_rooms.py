"""v10: what the bot's crypto needs to know about rooms (issue 11, end-to-end encryption).

``crypto_room``: whether a room is encrypted and its ``m.room.encryption`` content (rotation
period), learnt from the state event as it passes the inbox or asked of the homeserver once.
``crypto_member``: the users a room's Megolm session was last shared with, so a user's new
device invalidates the sessions of exactly the rooms they share with the bot.

The Olm account, sessions and device lists themselves are mautrix's crypto store
(``PgCryptoStore``): its tables live in this same database with their own version table
(``crypto_version``), upgraded by mautrix's own migrations when encryption is enabled."""

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table


async def upgrade_v10(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        """CREATE TABLE crypto_room (
            room_id    TEXT PRIMARY KEY,
            encryption TEXT
        )"""
    )
    await conn.execute(
        """CREATE TABLE crypto_member (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            PRIMARY KEY (room_id, user_id)
        )"""
    )
    await conn.execute("CREATE INDEX crypto_member_user ON crypto_member (user_id)")


upgrade_table.register(upgrade_v10, description="Encrypted rooms and their members (issue 11)")
