//! [`Generation`] in process, without the server: a request whose BestEffort model is evicted
//! under it (a Guaranteed model asking for the memory) is requeued on the reloaded model and
//! still delivers every token, and a stop string ends a request with its text cut.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::contexts::{ContextSpec, QosTier, TierRule};
use tandem_core::{FinishReason, NewRequest, StopCause};
use tandem_engine::{DeviceKind, DeviceLoader, Generation, GenerationEvent, ModelRegistry, ModelSource, Sizing};
use tandem_executor::model::{load_model_as, model_bytes, WeightFormat};
use tandem_executor::synth::{write_hf_model, SynthShape};
use tandem_executor::text::TextTokenizer;

const MIB: u64 = 1 << 20;

fn spec(name: &str, tier: QosTier, path: &std::path::Path) -> ContextSpec {
    ContextSpec {
        name: name.into(),
        tier,
        max_bytes: 40 * MIB,
        base_bytes: 0,
        weight_bytes: model_bytes(path, WeightFormat::F32).unwrap().1,
        min_kv_bytes: MIB,
        share: 1.0,
        keep_alive: Duration::from_secs(600),
    }
}

/// The default model's tokenizer, for random-weight models that speak real text.
fn tokenizer() -> TextTokenizer {
    load_model_as(&tandem_executor::store::default_model().unwrap(), WeightFormat::F32).unwrap().tokenizer
}

/// Every event of `g` until its end: (text, finish).
fn drain(g: &mut Generation) -> (String, Option<FinishReason>) {
    let mut text = String::new();
    while let Some(ev) = g.blocking_next() {
        match ev {
            GenerationEvent::Text { text: t, .. } => text.push_str(&t),
            GenerationEvent::Finished { reason, text: t } => {
                text.push_str(&t);
                return (text, Some(reason));
            }
            GenerationEvent::Failed(e) => panic!("failed: {e}"),
            GenerationEvent::Logprobs(_) => {}
        }
    }
    (text, None)
}

#[test]
fn an_evicted_request_is_requeued_in_process_and_delivers_every_token() {
    let dir = std::env::temp_dir().join(format!("tandem-generation-{}", std::process::id()));
    let (a, b) = (dir.join("a"), dir.join("b"));
    let tok = tokenizer();
    write_hf_model(&a, &SynthShape::tiny(), 1, Some(&tok)).unwrap();
    write_hf_model(&b, &SynthShape::tiny(), 2, Some(&tok)).unwrap();
    let source = |p: &std::path::Path| ModelSource {
        path: p.into(),
        device: DeviceKind::Cpu,
        weights: WeightFormat::F32,
        sim: None,
    };
    let sources = HashMap::from([("guaranteed".to_string(), source(&a)), ("besteffort".to_string(), source(&b))]);
    // 72 MiB: each model (~25 MiB of weights) may take 40. The BestEffort one loads first and
    // takes its 40; the Guaranteed one then needs 40 of the 32 left, so the BestEffort one is
    // evicted, and reloads with the 32 left.
    let specs = vec![spec("guaranteed", QosTier::Guaranteed, &a), spec("besteffort", QosTier::BestEffort, &b)];
    let loader = DeviceLoader::new(sources, Sizing::default());
    let registry = ModelRegistry::new(72 * MIB, specs, Box::new(loader), Box::new(TierRule)).unwrap();

    const TOKENS: usize = 400;
    let lease = Arc::new(registry.acquire("besteffort").unwrap());
    let mut req = NewRequest::new(1, vec![72, 105], TOKENS, Duration::ZERO);
    req.params.ignore_eos = true;
    let mut g = Generation::start(lease, req, Vec::new()).unwrap();
    // A few tokens in, the Guaranteed model is asked for.
    for _ in 0..3 {
        assert!(matches!(g.blocking_next(), Some(GenerationEvent::Text { .. })));
    }
    let r = registry.clone();
    let guaranteed = std::thread::spawn(move || r.acquire("guaranteed").map(|l| l.name.clone()));
    let (_, finish) = drain(&mut g);
    assert_eq!(guaranteed.join().unwrap().unwrap(), "guaranteed");
    assert_eq!(finish, Some(FinishReason::Length));
    assert_eq!(g.tokens(), TOKENS, "every token, across the requeue");
    assert!(g.requeues() >= 1 && registry.requeued() >= 1, "the eviction did not cut the request");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_stop_string_ends_the_request_with_its_text_cut() {
    let dir = std::env::temp_dir().join(format!("tandem-generation-stop-{}", std::process::id()));
    write_hf_model(&dir, &SynthShape::tiny(), 3, Some(&tokenizer())).unwrap();
    let src = ModelSource { path: dir.clone(), device: DeviceKind::Cpu, weights: WeightFormat::F32, sim: None };
    let running = tandem_engine::build::start(&src, &Sizing::default()).unwrap();
    let model = Arc::new(tandem_engine::ModelLease::unmanaged(Arc::new(tandem_engine::ServedModel::new(
        running.name,
        running.engine,
        running.tokenizer,
        running.max_model_len,
        running.describe,
    ))));
    // What the model says unstopped, greedily; then the same with its 6th–8th characters as a
    // stop string: the text ends just before them.
    let ask = |stop: Vec<String>| {
        let mut req = NewRequest::new(1, vec![72, 105], 40, Duration::ZERO);
        req.params.ignore_eos = true;
        req.params.sampler.temperature = 0.0;
        drain(&mut Generation::start(model.clone(), req, stop).unwrap())
    };
    let (full, finish) = ask(Vec::new());
    assert_eq!(finish, Some(FinishReason::Length));
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 8, "{full:?}");
    let stop: String = chars[5..8].iter().collect();
    let cut = full.find(&stop).unwrap();
    let (text, finish) = ask(vec![stop]);
    assert_eq!(finish, Some(FinishReason::Stopped(StopCause::StopString)));
    assert_eq!(text, full[..cut]);
    std::fs::remove_dir_all(&dir).ok();
}
