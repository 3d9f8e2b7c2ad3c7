//! The S3-compatible blob store (`serve --blob-store s3://BUCKET/PREFIX`), on the `object_store`
//! crate. Endpoint, region and credentials come from the standard `AWS_*` environment variables
//! (`AmazonS3Builder::from_env`: `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`, …).
//!
//! Layout: `PREFIX/jobs/<job id>/input.onnx | model.onnx | report.json`, plus
//! `PREFIX/_probe/ready` written by readiness checks.
//!
//! Invariants:
//! - a blob is written through a buffer of at most [`PART_BYTES`]: smaller blobs are one `PUT`
//!   at commit, larger ones a multipart upload whose parts go out as the buffer fills, so an
//!   upload never sits whole in memory; the object appears only when the upload completes
//!   (S3 makes a multipart object visible atomically) and an upload dropped before its commit
//!   is aborted;
//! - reads stream the object's body chunk by chunk;
//! - every request has a connect timeout (3 s) and few, fast retries, so an unreachable store
//!   surfaces as an [`unavailable`] error within seconds instead of blocking a worker for
//!   minutes; callers that can wait (the worker) retry on their own.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientConfigKey, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};

use super::{block_on, unavailable, BlobKind, BlobSink, BlobStore};
use crate::server::job::JobId;

/// Size of the parts of a multipart upload (S3's minimum is 5 MiB; 8 MiB is its tools' default).
pub const PART_BYTES: usize = 8 << 20;

/// Blobs in an S3 bucket under a prefix.
pub struct S3BlobStore {
    store: Arc<AmazonS3>,
    prefix: String,
    rt: tokio::runtime::Handle,
}

fn s3_err(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        object_store::Error::InvalidPath { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented { .. } => io::Error::other(e),
        other => unavailable(format!("object store: {other}")),
    }
}

impl S3BlobStore {
    /// The store for `bucket` and `prefix`, configured from the `AWS_*` environment. Must be
    /// called inside the tokio runtime that will drive its requests.
    pub fn from_env(bucket: &str, prefix: &str) -> io::Result<S3BlobStore> {
        // reqwest is built without a default TLS provider (no aws-lc); pick ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // Not `with_client_options`: that would drop what from_env read (AWS_ALLOW_HTTP…).
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "3s",
            )
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "600s")
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            })
            .build()
            .map_err(|e| io::Error::other(format!("--blob-store s3://{bucket}: {e}")))?;
        Ok(S3BlobStore {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            rt: tokio::runtime::Handle::current(),
        })
    }

    fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn blob(&self, job: &JobId, kind: BlobKind) -> Path {
        self.path(&format!("jobs/{job}/{}", kind.file_name()))
    }
}

struct S3Sink {
    store: Arc<AmazonS3>,
    path: Path,
    rt: tokio::runtime::Handle,
    buf: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
}

impl S3Sink {
    fn send_part(&mut self, part: Bytes) -> io::Result<()> {
        if self.upload.is_none() {
            let up = block_on(&self.rt, self.store.put_multipart(&self.path)).map_err(s3_err)?;
            self.upload = Some(up);
        }
        let Some(up) = self.upload.as_mut() else {
            return Err(io::Error::other("multipart upload missing"));
        };
        let fut = up.put_part(PutPayload::from(part));
        block_on(&self.rt, fut).map_err(s3_err)
    }
}

impl Write for S3Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= PART_BYTES {
            let rest = self.buf.split_off(PART_BYTES);
            let part = Bytes::from(std::mem::replace(&mut self.buf, rest));
            self.send_part(part)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobSink for S3Sink {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let rest = Bytes::from(std::mem::take(&mut self.buf));
        if self.upload.is_none() {
            let put = self.store.put(&self.path, PutPayload::from(rest));
            block_on(&self.rt, put).map_err(s3_err)?;
            return Ok(());
        }
        if !rest.is_empty() {
            self.send_part(rest)?;
        }
        let mut up = self
            .upload
            .take()
            .ok_or_else(|| io::Error::other("no upload"))?;
        let done = block_on(&self.rt, up.complete());
        if done.is_err() {
            self.rt.spawn(async move {
                let _ = up.abort().await;
            });
        }
        done.map(|_| ()).map_err(s3_err)
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        if let Some(mut up) = self.upload.take() {
            self.rt.spawn(async move {
                let _ = up.abort().await;
            });
        }
    }
}

struct S3Reader {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    rt: tokio::runtime::Handle,
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match block_on(&self.rt, self.stream.next()) {
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(s3_err(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl BlobStore for S3BlobStore {
    fn create(&self, job: &JobId, kind: BlobKind) -> io::Result<Box<dyn BlobSink>> {
        Ok(Box::new(S3Sink {
            store: Arc::clone(&self.store),
            path: self.blob(job, kind),
            rt: self.rt.clone(),
            buf: Vec::new(),
            upload: None,
        }))
    }

    fn open(&self, job: &JobId, kind: BlobKind) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let got = block_on(&self.rt, self.store.get(&self.blob(job, kind))).map_err(s3_err)?;
        let len = got.meta.size;
        Ok((
            Box::new(S3Reader {
                stream: got.into_stream(),
                chunk: Bytes::new(),
                rt: self.rt.clone(),
            }),
            len,
        ))
    }

    fn delete(&self, job: &JobId) -> io::Result<()> {
        let dir = self.path(&format!("jobs/{job}"));
        block_on(&self.rt, async {
            let metas: Vec<_> = self
                .store
                .list(Some(&dir))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(s3_err)?;
            for meta in metas {
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(s3_err(e)),
                }
            }
            Ok(())
        })
    }

    fn jobs(&self) -> io::Result<Vec<JobId>> {
        // Objects, not common prefixes: some servers keep a "folder" after its last object is
        // deleted.
        let dir = self.path("jobs");
        let depth = dir.parts().count();
        block_on(&self.rt, async {
            let mut ids = std::collections::BTreeSet::new();
            let mut listing = self.store.list(Some(&dir));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(s3_err)?;
                if let Some(id) = meta
                    .location
                    .parts()
                    .nth(depth)
                    .and_then(|p| JobId::parse(p.as_ref()))
                {
                    ids.insert(id);
                }
            }
            Ok(ids.into_iter().collect())
        })
    }

    fn check(&self) -> io::Result<()> {
        let path = self.path("_probe/ready");
        let probe = self.store.put(&path, PutPayload::from_static(b"ok"));
        block_on(&self.rt, async {
            match tokio::time::timeout(Duration::from_secs(3), probe).await {
                Ok(r) => r.map(|_| ()).map_err(s3_err),
                Err(_) => Err(unavailable("object store: no answer in time")),
            }
        })
    }

    fn presign(&self, job: &JobId, kind: BlobKind, ttl: Duration) -> io::Result<Option<String>> {
        let url = block_on(
            &self.rt,
            self.store.signed_url(
                object_store::signer::Method::GET,
                &self.blob(job, kind),
                ttl,
            ),
        )
        .map_err(s3_err)?;
        Ok(Some(url.to_string()))
    }
}
