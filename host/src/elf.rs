//! A minimal check of an ELF shared object before `dlopen` sees it.
//!
//! `dlopen` maps a library's segments straight from the file; a file cut
//! short maps pages past its end, and touching them kills the process with
//! `SIGBUS`. So the loader first reads the ELF and program headers and
//! refuses any file whose loadable segments do not fit inside it, or that
//! was built for another machine.

use std::fmt;

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
                    "truncated: its segments need {needed} bytes but the file has {size}"
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

/// Checks that `file` (the whole file) is a complete 64-bit little-endian
/// shared object for this machine.
pub fn check(file: &[u8]) -> Result<(), ElfProblem> {
    let size = file.len() as u64;
    let truncated = |needed: u64| ElfProblem::Truncated { needed, size };
    if file.get(..4) != Some(b"\x7fELF") {
        return Err(ElfProblem::NotElf);
    }
    if file.len() < 64 {
        return Err(truncated(64));
    }
    if file[4] != 2 {
        return Err(ElfProblem::WrongClass);
    }
    if file[5] != 1 {
        return Err(ElfProblem::WrongEndianness);
    }
    let e_type = u16_at(file, 16).ok_or_else(|| truncated(18))?;
    if e_type != ET_DYN {
        return Err(ElfProblem::NotSharedObject(e_type));
    }
    let machine = u16_at(file, 18).ok_or_else(|| truncated(20))?;
    if host_machine() != 0 && machine != host_machine() {
        return Err(ElfProblem::WrongMachine(machine));
    }
    let phoff = u64_at(file, 32).ok_or_else(|| truncated(40))?;
    let phentsize = u64::from(u16_at(file, 54).ok_or_else(|| truncated(56))?);
    let phnum = u64::from(u16_at(file, 56).ok_or_else(|| truncated(58))?);
    let table_end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    if table_end > size || phentsize < 56 {
        return Err(truncated(table_end));
    }
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        let p_type = u32_at(file, at).ok_or_else(|| truncated(table_end))?;
        if p_type != PT_LOAD {
            continue;
        }
        let offset = u64_at(file, at + 8).ok_or_else(|| truncated(table_end))?;
        let filesz = u64_at(file, at + 32).ok_or_else(|| truncated(table_end))?;
        let end = offset.saturating_add(filesz);
        if end > size {
            return Err(truncated(end));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_passes_and_cut_copies_fail() {
        // Test executables are position-independent (ET_DYN) on Linux.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if u16_at(&exe, 16) == Some(ET_DYN) {
            check(&exe).unwrap();
            assert!(matches!(
                check(&exe[..exe.len() / 2]),
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
