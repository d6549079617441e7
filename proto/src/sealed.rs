//! Secrets handed to one claimed run. A worker process draws a key pair when it starts and sends
//! its public half with every claim; the control plane seals the secrets a claimed run needs to
//! that key (X25519 agreement with a key of its own for this message, HKDF-SHA256, then
//! XChaCha20-Poly1305), bound to the run and attempt. So a claim reply crosses the bus (NATS
//! request / reply in a fleet) only as ciphertext that the claiming process alone can open, and
//! a reply replayed for another run or attempt does not open.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::ids::RunId;

/// Names a secret's value by. The control plane gives each run the values of the credentials its
/// MCP servers name, by credential name.
pub type Secrets = BTreeMap<String, String>;

const KEY_INFO: &[u8] = b"autopilot run secrets v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealedError {
    #[error("the worker's sealing key is not 32 bytes of base64url")]
    BadKey,
    #[error("the sealed secrets are not in the expected format")]
    Format,
    #[error("the sealed secrets do not open with this worker's key for this run and attempt")]
    Open,
}

/// A worker process's key pair. The private half never leaves the process.
pub struct WorkerKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for WorkerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerKey {{ public: {} }}", self.public_key())
    }
}

impl Default for WorkerKey {
    fn default() -> Self {
        Self::generate()
    }
}

impl WorkerKey {
    pub fn generate() -> Self {
        let secret = StaticSecret::from(rand::random::<[u8; 32]>());
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The public half, as sent in a claim.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public.as_bytes())
    }

    /// Opens secrets sealed to this key for `run_id` at `attempt`.
    pub fn open(
        &self,
        sealed: &SealedSecrets,
        run_id: RunId,
        attempt: u32,
    ) -> Result<Secrets, SealedError> {
        let sender = PublicKey::from(decode_32(&sealed.sender).ok_or(SealedError::Format)?);
        let nonce: [u8; 24] = URL_SAFE_NO_PAD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(SealedError::Format)?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(&sealed.ciphertext)
            .map_err(|_| SealedError::Format)?;
        let shared = self.secret.diffie_hellman(&sender);
        let cipher = cipher(shared.as_bytes(), &sender, &self.public);
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: bound_to(run_id, attempt).as_bytes(),
                },
            )
            .map_err(|_| SealedError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| SealedError::Format)
    }
}

/// Secrets sealed to one worker process for one attempt of one run. `Debug` shows their size only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecrets {
    /// The public half of the key the control plane drew for this message.
    sender: String,
    nonce: String,
    ciphertext: String,
}

impl fmt::Debug for SealedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecrets({} bytes)", self.ciphertext.len())
    }
}

impl SealedSecrets {
    /// Seals `secrets` to the worker whose public key is `worker_key`, for `run_id` at `attempt`.
    pub fn seal(
        worker_key: &str,
        run_id: RunId,
        attempt: u32,
        secrets: &Secrets,
    ) -> Result<Self, SealedError> {
        let worker = PublicKey::from(decode_32(worker_key).ok_or(SealedError::BadKey)?);
        let own = StaticSecret::from(rand::random::<[u8; 32]>());
        let sender = PublicKey::from(&own);
        let shared = own.diffie_hellman(&worker);
        let nonce: [u8; 24] = rand::random();
        let plain = serde_json::to_vec(secrets).expect("a map of strings serializes");
        let ciphertext = cipher(shared.as_bytes(), &sender, &worker)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: bound_to(run_id, attempt).as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        Ok(Self {
            sender: URL_SAFE_NO_PAD.encode(sender.as_bytes()),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ciphertext: URL_SAFE_NO_PAD.encode(ciphertext),
        })
    }
}

fn decode_32(text: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

fn bound_to(run_id: RunId, attempt: u32) -> String {
    format!("run:{run_id}:{attempt}")
}

/// The message key: HKDF over the shared secret, salted with both public keys.
fn cipher(shared: &[u8; 32], sender: &PublicKey, worker: &PublicKey) -> XChaCha20Poly1305 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(sender.as_bytes());
    salt[32..].copy_from_slice(worker.as_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(KEY_INFO, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XChaCha20Poly1305::new((&key).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::from([("SMTP_PASSWORD".to_owned(), "hunter2-long".to_owned())])
    }

    #[test]
    fn only_the_claiming_worker_opens_them_and_only_for_that_attempt() {
        let worker = WorkerKey::generate();
        let run = RunId::new();
        let sealed = SealedSecrets::seal(&worker.public_key(), run, 2, &secrets()).unwrap();
        let wire = serde_json::to_string(&sealed).unwrap();
        assert!(!wire.contains("hunter2"), "{wire}");
        assert!(!format!("{sealed:?}").contains(&sealed.ciphertext));
        assert_eq!(worker.open(&sealed, run, 2).unwrap(), secrets());
        assert_eq!(worker.open(&sealed, run, 3), Err(SealedError::Open));
        assert_eq!(
            worker.open(&sealed, RunId::new(), 2),
            Err(SealedError::Open)
        );
        assert_eq!(
            WorkerKey::generate().open(&sealed, run, 2),
            Err(SealedError::Open)
        );
        let mut tampered = sealed.clone();
        tampered.nonce = URL_SAFE_NO_PAD.encode([0u8; 24]);
        assert_eq!(worker.open(&tampered, run, 2), Err(SealedError::Open));
        assert_eq!(
            SealedSecrets::seal("not a key", run, 2, &secrets()),
            Err(SealedError::BadKey)
        );
    }
}
