//! vLLM's KV-event wire format: a batch is msgpack, encoded as msgspec encodes vLLM's
//! `KVEventBatch` structs (`array_like=True`, `tag=True`): `[ts, [event, …]]`, each event an
//! array whose first element is its class name:
//!
//! - `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
//!   lora_name]`
//! - `["BlockRemoved", block_hashes, medium]`
//! - `["AllBlocksCleared"]`
//!
//! That is the layout of vLLM's documented subscriber (`examples/online_serving/
//! kv_events_subscriber.py`) and of the routers that decode it (llm-d's KV-cache indexer,
//! Dynamo's KV router); fields past a decoder's own are ignored by msgspec, so decoders of
//! the older five-field `BlockStored` read it too (the test subscriber checks both). Block
//! hashes are 64-bit unsigned integers, as vLLM sends them by default: the low 64 bits of
//! tandem's 128-bit key. `medium` is `"GPU"`, vLLM's name for the device tier (tandem's
//! device blocks, on whatever device), `lora_id` and `lora_name` are nil (no adapters).

use tandem_core::kv::{BlockHash, KvEvent};
use tandem_engine::KvEventBatch;

use crate::KvEventsError;

/// vLLM's `MEDIUM_GPU`: the device tier.
pub const MEDIUM_DEVICE: &str = "GPU";

/// A block's key as subscribers see it.
pub fn wire_hash(h: BlockHash) -> u64 {
    h.0 as u64
}

/// One batch, msgpack-encoded; `block_size` is the engine's tokens per block.
pub fn encode_batch(batch: &KvEventBatch, block_size: usize) -> Result<Vec<u8>, KvEventsError> {
    let mut w = Vec::with_capacity(64 + 8 * batch.events.len());
    let ts = batch.at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    enc(rmp::encode::write_array_len(&mut w, 2))?;
    enc(rmp::encode::write_f64(&mut w, ts))?;
    enc(rmp::encode::write_array_len(&mut w, len(batch.events.len())?))?;
    for e in &batch.events {
        encode_event(&mut w, e, block_size)?;
    }
    Ok(w)
}

fn encode_event(w: &mut Vec<u8>, e: &KvEvent, block_size: usize) -> Result<(), KvEventsError> {
    match e {
        KvEvent::Stored { hashes, parent, tokens } => {
            enc(rmp::encode::write_array_len(w, 8))?;
            enc(rmp::encode::write_str(w, "BlockStored"))?;
            hash_list(w, hashes)?;
            match parent {
                Some(p) => enc(rmp::encode::write_uint(w, wire_hash(*p)))?,
                None => enc(rmp::encode::write_nil(w))?,
            }
            enc(rmp::encode::write_array_len(w, len(tokens.len())?))?;
            for &t in tokens {
                enc(rmp::encode::write_uint(w, u64::from(t)))?;
            }
            enc(rmp::encode::write_uint(w, block_size as u64))?;
            enc(rmp::encode::write_nil(w))?; // lora_id
            enc(rmp::encode::write_str(w, MEDIUM_DEVICE))?;
            enc(rmp::encode::write_nil(w)) // lora_name
        }
        KvEvent::Removed { hashes } => {
            enc(rmp::encode::write_array_len(w, 3))?;
            enc(rmp::encode::write_str(w, "BlockRemoved"))?;
            hash_list(w, hashes)?;
            enc(rmp::encode::write_str(w, MEDIUM_DEVICE))
        }
        KvEvent::Cleared => {
            enc(rmp::encode::write_array_len(w, 1))?;
            enc(rmp::encode::write_str(w, "AllBlocksCleared"))
        }
    }
}

fn hash_list(w: &mut Vec<u8>, hashes: &[BlockHash]) -> Result<(), KvEventsError> {
    enc(rmp::encode::write_array_len(w, len(hashes.len())?))?;
    for &h in hashes {
        enc(rmp::encode::write_uint(w, wire_hash(h)))?;
    }
    Ok(())
}

fn len(n: usize) -> Result<u32, KvEventsError> {
    u32::try_from(n).map_err(|_| KvEventsError::TooLong(n))
}

fn enc<T, E: std::error::Error + Send + Sync + 'static>(r: Result<T, E>) -> Result<(), KvEventsError> {
    r.map(drop).map_err(|e| KvEventsError::Encode(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn batch(events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch { at: UNIX_EPOCH + Duration::from_millis(1500), events }
    }

    #[test]
    fn removal_and_clear_bytes_are_msgspecs() {
        let b = batch(vec![KvEvent::Removed { hashes: vec![BlockHash(7)] }, KvEvent::Cleared]);
        let got = encode_batch(&b, 16).unwrap();
        let mut want = vec![0x92, 0xcb]; // fixarray(2), float64
        want.extend(1.5f64.to_be_bytes()); // ts = 1.5 s
        want.push(0x92); // two events
        want.push(0x93); // BlockRemoved: fixarray(3)
        want.push(0xa0 + 12); // fixstr(12)
        want.extend(b"BlockRemoved");
        want.extend([0x91, 0x07]); // [7]
        want.extend([0xa3, b'G', b'P', b'U']); // "GPU"
        want.push(0x91); // AllBlocksCleared: fixarray(1)
        want.push(0xa0 + 16);
        want.extend(b"AllBlocksCleared");
        assert_eq!(got, want);
    }

    #[test]
    fn stored_carries_hashes_parent_tokens_and_block_size() {
        // A 128-bit key goes out as its low 64 bits: 2^64 + 5 → 5.
        let h = BlockHash((1u128 << 64) + 5);
        let b = batch(vec![KvEvent::Stored { hashes: vec![h], parent: None, tokens: vec![1, 300] }]);
        let got = encode_batch(&b, 2).unwrap();
        let tail = [
            0x98, // fixarray(8)
            0xab, b'B', b'l', b'o', b'c', b'k', b'S', b't', b'o', b'r', b'e', b'd', // fixstr(11)
            0x91, 0x05, // [5]
            0xc0, // parent nil
            0x92, 0x01, 0xcd, 0x01, 0x2c, // [1, 300] (300 = 0x012c, uint16)
            0x02, // block_size 2
            0xc0, // lora_id nil
            0xa3, b'G', b'P', b'U', 0xc0, // medium, lora_name nil
        ];
        assert_eq!(&got[got.len() - tail.len()..], &tail[..]);
    }
}
