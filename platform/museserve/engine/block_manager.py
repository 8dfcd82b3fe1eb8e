"""Logical KV blocks: integer ids, reference counts and the prefix cache. No tensors.

A full block is keyed by its chain hash (`block_hashes`): the tenant, every token up to it
and its media, so one tenant's prompt never reuses, or times, another tenant's cache, and one
image's KV never stands in for another's.

Free blocks (ref count 0) sit in one LRU order: blocks without cached content first,
then cached ones by last use. Allocation takes from the front, so the least recently
used cached block is evicted only when no empty block is left; a sequence frees its
blocks tail first, so the heads of shared prefixes outlive their tails.

With a second tier (`TierIndex`: host memory or disk), an evicted cached block is first copied
to a tier slot, and a prompt whose prefix runs on past its device-cached blocks into tier
entries gets fresh blocks that the tier's copies fill. The copies ride on the next plan
(`take_transfers`: `SchedulerPlan.kv_saves` and `kv_loads`); the runner applies all saves of a
plan, then all loads, then runs its step, steps in plan order on one thread. So:
- a save reads its block before anything overwrites it: the block was free when evicted, so
  only this plan's step or a later one writes it, and steps before it never write a full block
  that carries a hash (`cache_computed_blocks` registers only completely written blocks);
- a load lands before any step reads the block: the sequence reads it from this plan's step on,
  and a sequence that takes the block after it was freed is planned in a later plan;
- a loaded block is registered as cached only after the step that loaded it came back (as a
  computed one), so a sequence preempted or aborted before then never leaves a block that
  claims content it does not hold yet;
- within one plan a slot is touched by at most one save and is never saved into after a load
  from it was recorded (pending slots are pinned), so saves-then-loads is the recorded order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq

from museserve.engine.block_hashes import BlockHash, extend_chain
from museserve.engine.kv_events import KVEventLog
from museserve.engine.kv_tier_index import TierIndex
from museserve.engine.media import block_media_keys
from museserve.engine.sequence import Sequence


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True, tier: TierIndex | None = None
    ):
        """`tier`: where evicted cached blocks go and come back from (None: they are dropped)."""
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._hashes: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}  # hash -> block id holding that content
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.prefix_queries = 0  # prompt tokens looked up in the cache
        self.prefix_hits = 0  # of which found (on the device or in the tier)
        self.tier = tier if enable_prefix_caching else None
        self.tier_hits = 0  # prompt tokens of first admissions found in the tier (a part of prefix_hits)
        self.tier_saves = 0  # blocks copied to the tier
        self.tier_loads = 0  # blocks copied back from it
        self.kv_events = KVEventLog()  # hashes this replica starts or stops holding, for routers
        # Copies for the plan being built: (block id, slot) and (slot, block id); their slots pinned.
        self._saves: list[tuple[int, int]] = []
        self._loads: list[tuple[int, int]] = []
        self._pinned_slots: set[int] = set()

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running sequences."""
        return 1.0 - len(self._free) / self.num_blocks

    def held_hashes(self) -> list[BlockHash]:
        """Every hash whose KV this replica holds, on the device or in the tier (`kv_events`' set)."""
        in_tier = [h for h in self.tier.hashes() if h not in self._cached] if self.tier is not None else []
        return [*self._cached, *in_tier]

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- admission: prefix lookup, then allocation --------------------------------------

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of `seq`, in full blocks, leaving at least
        one token to compute (its logits start generation; for a live sequence, one before the
        token it holds back). Takes no references."""
        if not self.enable_prefix_caching or seq.scores_prompt:
            return []  # every position of a prompt being scored is computed
        hashes = self._chain_for(seq, (seq.num_computable_tokens - 1) // self.block_size)
        found = []
        for block_hash in hashes:
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def tier_prefix(self, seq: Sequence, num_cached: int) -> list[int]:
        """Tier slots of the blocks after `seq`'s first `num_cached` (its device-cached prefix),
        in chain order up to the first block not in the tier, leaving at least one token to
        compute. Stops at a block cached on the device too (rare: heads outlive tails there)."""
        if self.tier is None:
            return []
        slots = []
        for block_hash in self._chain_for(seq, (seq.num_computable_tokens - 1) // self.block_size)[num_cached:]:
            slot = self.tier.lookup(block_hash)
            if slot is None or block_hash in self._cached:
                break
            slots.append(slot)
        return slots

    def can_admit(self, seq: Sequence, cached: list[int], num_new_tokens: int, tier_slots: Seq[int] = ()) -> bool:
        """Whether `cached` plus fresh blocks can hold the cached tokens, the `tier_slots`' blocks
        and `num_new_tokens`."""
        num_prefix = len(cached) + len(tier_slots)
        needed = self.blocks_for(num_prefix * self.block_size + num_new_tokens) - len(cached)
        reused_free = sum(1 for b in cached if self._ref_counts[b] == 0)
        return needed <= self.num_free_blocks - reused_free

    def admit(self, seq: Sequence, cached: list[int], num_new_tokens: int, tier_slots: Seq[int] = ()) -> None:
        """Gives `seq` the cached blocks, a fresh block per tier slot (loaded by the next plan)
        and enough fresh ones for `num_new_tokens`; its computed tokens start after the cached
        and loaded prefix. Call `can_admit` first."""
        assert not seq.block_ids, "a sequence is admitted once per residency"
        for block_id in cached:
            self._take(block_id)
        seq.block_ids = list(cached)
        if tier_slots:
            self._load_from_tier(seq, tier_slots)
        seq.num_computed_tokens = len(seq.block_ids) * self.block_size
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = seq.num_computed_tokens
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += seq.num_computed_tokens
            self.tier_hits += len(tier_slots) * self.block_size
        self.grow(seq, num_new_tokens)

    def take_transfers(self) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        """The tier copies recorded since the last call, for the plan being built: saves
        (block id, slot) and loads (slot, block id). The plan must run: its step is the next to
        write any evicted block and the first to read any loaded one."""
        saves, loads = tuple(self._saves), tuple(self._loads)
        self._saves.clear()
        self._loads.clear()
        self._pinned_slots.clear()
        return saves, loads

    # -- running: room for the next tokens ----------------------------------------------

    def can_grow(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_ids)
        return needed <= self.num_free_blocks

    def grow(self, seq: Sequence, num_new_tokens: int) -> None:
        """Appends blocks so `seq` can hold its computed tokens plus `num_new_tokens`."""
        needed = self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_ids)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"{needed} blocks needed, {self.num_free_blocks} free: check can_grow first")
        for _ in range(needed):
            seq.block_ids.append(self._allocate())

    def release_tail(self, seq: Sequence) -> None:
        """Frees `seq`'s blocks past those its tokens need: slots reserved for proposals a step
        rejected. Such blocks were allocated fresh for `seq` alone and never hashed."""
        keep = self.blocks_for(seq.num_tokens)
        while len(seq.block_ids) > keep:
            block_id = seq.block_ids.pop()
            self._ref_counts[block_id] -= 1
            assert self._ref_counts[block_id] == 0 and self._hashes[block_id] is None, "a shared tail block"
            self._free[block_id] = None
            self._free.move_to_end(block_id, last=False)

    def cache_computed_blocks(self, seq: Sequence, num_written_tokens: int | None = None) -> None:
        """Registers the blocks whose KV the device has written completely, so later prompts can
        reuse them. `num_written_tokens`: how many of its tokens that is, when a step planned
        after it still runs (None: all of its computed tokens)."""
        if not self.enable_prefix_caching:
            return
        written = seq.num_computed_tokens if num_written_tokens is None else num_written_tokens
        num_full = min(written, seq.num_computed_tokens) // self.block_size
        for index, block_hash in enumerate(self._chain_for(seq, num_full)):
            block_id = seq.block_ids[index]
            if self._hashes[block_id] is None and block_hash not in self._cached:
                self._hashes[block_id] = block_hash
                self._cached[block_hash] = block_id
                self.kv_events.stored(block_hash)

    # -- leaving: finish, abort, preemption ---------------------------------------------

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_ids):
            self._ref_counts[block_id] -= 1
            assert self._ref_counts[block_id] >= 0, f"block {block_id} freed twice"
            if self._ref_counts[block_id] == 0:
                self._free[block_id] = None
                if self._hashes[block_id] is None:  # nothing to reuse: hand it out first
                    self._free.move_to_end(block_id, last=False)
        seq.block_ids = []
        seq.num_computed_tokens = 0

    def drop_prefix_cache(self) -> None:
        """Forgets every cached block's content: the KV tensors behind the ids were lost (a
        worker of the replica died), so no later prompt may reuse them. Call with no running
        sequences; the sequences' hash memos stay valid (they hash tokens, not tensors)."""
        self._cached.clear()
        self._hashes = [None] * self.num_blocks
        if self.tier is not None:  # the tier's storage lives with the executor's workers
            self.tier.clear()
        self.take_transfers()
        self.kv_events.reset()

    # -- internals ----------------------------------------------------------------------

    def _chain_for(self, seq: Sequence, num_full_blocks: int) -> list[BlockHash]:
        chain = seq.block_hashes
        media = self._media_keys_of(seq) if len(chain) < num_full_blocks else {}
        return extend_chain(chain, seq.token_ids, seq.cache_salt, media, self.block_size, num_full_blocks)

    def _media_keys_of(self, seq: Sequence) -> dict[int, bytes]:
        if not seq.media:
            return {}
        if seq.media_keys is None:
            seq.media_keys = block_media_keys(seq.media, self.block_size)
        return seq.media_keys

    def _take(self, block_id: int) -> None:
        if self._ref_counts[block_id] == 0:
            del self._free[block_id]
        self._ref_counts[block_id] += 1

    def _allocate(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        self._evict(block_id)
        self._ref_counts[block_id] = 1
        return block_id

    def _evict(self, block_id: int) -> None:
        """Forgets a free block's cached content, copying it to the tier first where it is not there yet."""
        block_hash = self._hashes[block_id]
        if block_hash is None:
            return
        del self._cached[block_hash]
        self._hashes[block_id] = None
        if self.tier is None:
            self.kv_events.removed(block_hash)
            return
        if self.tier.lookup(block_hash) is not None:
            self.tier.touch(block_hash)
            return
        slot = self.tier.reserve(block_hash, self._pinned_slots, self._dropped_from_tier)
        if slot is None:  # every slot has a copy pending in this plan; the content is dropped
            self.kv_events.removed(block_hash)
            return
        self._saves.append((block_id, slot))
        self._pinned_slots.add(slot)
        self.tier_saves += 1

    def _dropped_from_tier(self, block_hash: BlockHash) -> None:
        if block_hash not in self._cached:  # still on the device: still held
            self.kv_events.removed(block_hash)

    def _load_from_tier(self, seq: Sequence, tier_slots: Seq[int]) -> None:
        # Pinned before any allocation: evicting blocks for the loads saves to the tier, and
        # must not replace the slots this sequence is about to load from.
        self._pinned_slots.update(tier_slots)
        for block_hash in seq.block_hashes[len(seq.block_ids) : len(seq.block_ids) + len(tier_slots)]:
            self.tier.touch(block_hash)
        for slot in tier_slots:
            block_id = self._allocate()
            self._loads.append((slot, block_id))
            seq.block_ids.append(block_id)
        self.tier_loads += len(tier_slots)

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]
