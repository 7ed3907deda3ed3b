//! A minimal check of an ELF shared object before `dlopen` sees it.
//!
//! `dlopen` maps a library's segments straight from the file; a file cut
//! short maps pages past its end, and touching them kills the process with
//! `SIGBUS`. So the loader first reads the ELF and program headers and
//! refuses any file whose loadable segments do not fit inside it, or that
//! was built for another machine.
//!
//! The section header table is checked too, though `dlopen` never reads
//! it: linkers write it last, after the debug information, so a file whose
//! table runs past its end is a copy still being written (or cut short).
//! Such a prefix can hold every loadable segment and load fine, and would
//! then be replaced by the whole file a moment later.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

const PT_LOAD: u32 = 1;
const ET_DYN: u16 = 3;

/// Why a file is not a library this host can load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfProblem {
    NotElf,
    WrongClass,
    WrongEndianness,
    NotSharedObject(u16),
    WrongMachine(u16),
    Truncated { needed: u64, size: u64 },
}

impl fmt::Display for ElfProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf => write!(f, "not an ELF file (no \\x7fELF magic)"),
            Self::WrongClass => write!(f, "not a 64-bit ELF file"),
            Self::WrongEndianness => write!(f, "ELF file of the wrong byte order"),
            Self::NotSharedObject(t) => write!(f, "ELF file of type {t}, not a shared object"),
            Self::WrongMachine(m) => write!(
                f,
                "ELF file for machine {m}, not this one ({})",
                host_machine()
            ),
            Self::Truncated { needed, size } => {
                write!(
                    f,
                    "truncated: its segments and section headers need {needed} bytes but the file has {size}"
                )
            }
        }
    }
}

fn host_machine() -> u16 {
    if cfg!(target_arch = "x86_64") {
        62
    } else if cfg!(target_arch = "aarch64") {
        183
    } else if cfg!(target_arch = "riscv64") {
        243
    } else {
        0
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The size of an ELF64 program header entry.
const PHENT_SIZE: u64 = 56;

/// Checks that `file` is a complete 64-bit little-endian shared object for
/// this machine: its program header table, every loadable segment and its
/// section header table lie inside it. Reads only the ELF header and the
/// program header table (at most 65535 entries of 56 bytes), whatever the
/// file's size.
pub fn check_file(file: &mut (impl Read + Seek), size: u64) -> Result<(), ElfProblem> {
    let truncated = |needed: u64| ElfProblem::Truncated { needed, size };
    let mut header = [0u8; 64];
    let got = read_at(file, 0, &mut header).map_err(|_| truncated(64))?;
    if got < 4 || header[..4] != *b"\x7fELF" {
        return Err(ElfProblem::NotElf);
    }
    if got < header.len() {
        return Err(truncated(64));
    }
    if header[4] != 2 {
        return Err(ElfProblem::WrongClass);
    }
    if header[5] != 1 {
        return Err(ElfProblem::WrongEndianness);
    }
    let e_type = u16_at(&header, 16).ok_or_else(|| truncated(64))?;
    if e_type != ET_DYN {
        return Err(ElfProblem::NotSharedObject(e_type));
    }
    let machine = u16_at(&header, 18).ok_or_else(|| truncated(64))?;
    if host_machine() != 0 && machine != host_machine() {
        return Err(ElfProblem::WrongMachine(machine));
    }
    let phoff = u64_at(&header, 32).ok_or_else(|| truncated(64))?;
    let shoff = u64_at(&header, 40).ok_or_else(|| truncated(64))?;
    let shentsize = u64::from(u16_at(&header, 58).ok_or_else(|| truncated(64))?);
    let shnum = u64::from(u16_at(&header, 60).ok_or_else(|| truncated(64))?);
    let phentsize = u64::from(u16_at(&header, 54).ok_or_else(|| truncated(64))?);
    let phnum = u64::from(u16_at(&header, 56).ok_or_else(|| truncated(64))?);
    if phentsize != PHENT_SIZE {
        return Err(ElfProblem::NotElf);
    }
    let table_len = phentsize * phnum;
    let table_end = phoff.saturating_add(table_len);
    if table_end > size {
        return Err(truncated(table_end));
    }
    let mut table = vec![0u8; table_len as usize];
    if read_at(file, phoff, &mut table).map_err(|_| truncated(table_end))? < table.len() {
        return Err(truncated(table_end));
    }
    for entry in table.chunks_exact(PHENT_SIZE as usize) {
        if u32_at(entry, 0) != Some(PT_LOAD) {
            continue;
        }
        let offset = u64_at(entry, 8).unwrap_or(u64::MAX);
        let filesz = u64_at(entry, 32).unwrap_or(u64::MAX);
        let end = offset.saturating_add(filesz);
        if end > size {
            return Err(truncated(end));
        }
    }
    if shoff != 0 {
        // With more than 65279 sections, `e_shnum` is 0 and the count is
        // in the first entry: that entry at least must be there.
        let end = shoff.saturating_add(shentsize.saturating_mul(shnum.max(1)));
        if end > size {
            return Err(truncated(end));
        }
    }
    Ok(())
}

/// Reads as much of `buf` as the file holds from `offset`; returns the count.
fn read_at(file: &mut (impl Read + Seek), offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// [`check_file`] on bytes in memory.
#[cfg(test)]
fn check(bytes: &[u8]) -> Result<(), ElfProblem> {
    check_file(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_passes_and_cut_copies_fail() {
        // Test executables are position-independent (ET_DYN) on Linux; their
        // code alone is far larger than 8 KiB.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if u16_at(&exe, 16) == Some(ET_DYN) {
            check(&exe).unwrap();
            assert!(matches!(
                check(&exe[..8192]),
                Err(ElfProblem::Truncated { .. })
            ));
            // Every loadable segment is there, but not the section headers
            // that linkers write last: a copy caught while being written.
            assert!(matches!(
                check(&exe[..exe.len() - 1]),
                Err(ElfProblem::Truncated { .. })
            ));
        }
        assert!(matches!(
            check(&exe[..40]),
            Err(ElfProblem::Truncated { .. })
        ));
        assert_eq!(
            check(b"hello world, not a library"),
            Err(ElfProblem::NotElf)
        );
        assert_eq!(check(b""), Err(ElfProblem::NotElf));
    }
}
