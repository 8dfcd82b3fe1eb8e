"""The client side of Converse (live voice): `museserve talk`, and the speech streaming it
shares with the load tester (`speech`: PCM16 chunks, when each is due, the messages)."""
