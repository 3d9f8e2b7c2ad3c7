//! Model files read through a read-only memory map, so that decoding borrows the tensors' bytes
//! from the page cache instead of copying the file into the heap.
//!
//! [`map_file`] returns the whole file as [`Bytes`] whose owner is the map: `raw_data` of the
//! decoded model shares it, and the map is unmapped when the last of those slices is dropped.
//!
//! Invariant (the one `unsafe` assumption of this module): a mapped file is not modified or
//! truncated while it is mapped. The CLI maps the file it was asked to read (a user changing it
//! during the run changes what the run reads, exactly as a file changed between two `read`
//! calls would; truncating it makes a later access fault, which a read-only model file given to
//! a command does not do in practice); the service maps only its own upload files, which are
//! written once to a temporary file, renamed into place and never written again (deleting one
//! unlinks it, which leaves existing maps valid).
//!
//! Pages of the map that the process touched count toward its resident set until they are
//! unmapped. [`release`] drops the pages under a slice of a mapped file once its content was
//! used for now (the passes decode weights into their own f32 buffers; a deferred weight's value
//! was computed from it; the writer wrote it): the map is read-only (`PROT_READ`, shared with the
//! page cache, never written), so a later access re-reads the same bytes from the page cache.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use memmap2::{Mmap, UncheckedAdvice};

/// The maps alive in the process: address range and map.
static MAPS: Mutex<Vec<(usize, usize, Weak<Mmap>)>> = Mutex::new(Vec::new());

/// The owner of a mapped file's [`Bytes`]; unregisters the map when the last slice goes.
struct Mapped(Arc<Mmap>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let start = self.0.as_ptr() as usize;
        if let Ok(mut maps) = MAPS.lock() {
            maps.retain(|(s, _, _)| *s != start);
        }
    }
}

/// The content of the file at `path`, memory-mapped read-only (an empty file is an empty
/// buffer). See the module documentation for the assumption this makes.
pub fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let file = File::open(path)?;
    map(&file)
}

/// [`map_file`] on an open file. What is not a regular file (a pipe, `/dev/stdin`) is read
/// into memory instead; a folder is an error.
pub fn map(file: &File) -> std::io::Result<Bytes> {
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        ));
    }
    if !meta.is_file() {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut &*file, &mut data)?;
        return Ok(Bytes::from(data));
    }
    if meta.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only and the file is not modified while it is mapped (module
    // invariant); every access goes through `&[u8]` of the `Bytes` that own the map.
    let map = Arc::new(unsafe { Mmap::map(file)? });
    let _ = map.advise(memmap2::Advice::Sequential);
    let start = map.as_ptr() as usize;
    if let Ok(mut maps) = MAPS.lock() {
        maps.push((start, start + map.len(), Arc::downgrade(&map)));
    }
    Ok(Bytes::from_owner(Mapped(map)))
}

/// Drops from the resident set the whole pages under `data` when `data` lies in a mapped file
/// (the bytes stay readable: they are re-read from the page cache on the next access); does
/// nothing for any other memory.
pub fn release(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
    let Some((start, map)) = MAPS.lock().ok().and_then(|maps| {
        maps.iter()
            .find(|(s, e, _)| *s <= lo && hi <= *e)
            .and_then(|(s, _, m)| Some((*s, m.upgrade()?)))
    }) else {
        return;
    };
    let page = page_size();
    let first = (lo - start).div_ceil(page) * page;
    let last = (hi - start) / page * page;
    if last > first {
        // SAFETY: MADV_DONTNEED on a read-only (PROT_READ, MAP_SHARED) file mapping only
        // unmaps the pages: a later access maps the same page-cache pages again (no page of
        // this map can have been written, so nothing is lost).
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first) };
    }
}

/// Asks for transparent huge pages under the whole 2 MiB pages of a fresh allocation of `len`
/// bytes at `ptr` (Linux; nothing elsewhere or below 4 MiB).
pub fn huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    if len < 2 * HUGE {
        return;
    }
    let lo = (ptr as usize).div_ceil(HUGE) * HUGE;
    let hi = (ptr as usize + len) / HUGE * HUGE;
    if hi <= lo {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(
                addr: *mut std::ffi::c_void,
                len: usize,
                advice: std::ffi::c_int,
            ) -> std::ffi::c_int;
        }
        const MADV_HUGEPAGE: std::ffi::c_int = 14;
        // SAFETY: an advice on whole pages inside an allocation this process owns; it changes
        // how the kernel backs them, never their content.
        unsafe {
            madvise(lo as *mut std::ffi::c_void, hi - lo, MADV_HUGEPAGE);
        }
    }
}

/// The rounding unit of [`release`]. Where pages are larger, memmap2 rounds the start down to
/// the real page: a neighbour's page may be dropped too, which costs it a re-read, not data.
fn page_size() -> usize {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_reads_back_and_stays_readable_after_release() {
        let path = std::env::temp_dir().join(format!("onnx-cle-mapped-{}", std::process::id()));
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let bytes = map_file(&path).unwrap();
        assert_eq!(&bytes[..], &data[..]);
        let slice = bytes.slice(1000..50_000);
        release(&slice);
        assert_eq!(&slice[..], &data[1000..50_000]);
        drop(bytes);
        assert_eq!(&slice[..], &data[1000..50_000]);
        drop(slice);
        std::fs::write(&path, b"").unwrap();
        assert!(map_file(&path).unwrap().is_empty());
        std::fs::remove_file(&path).unwrap();
    }
}
