"""Structured output: grammar constraints on tool calls and JSON answers, and the budget
steering that closes a JSON answer within its tokens."""
