//! Where the launcher ELF ends, computed from its headers rather than trusted from a field.

use crate::error::{ImageError, Result};

/// Where every image marks itself inside the launcher's ELF identification bytes
/// (`e_ident[8..11]`, ABI version and padding, which Linux ignores for executables): the
/// bytes FlatImage writes there, so a file manager's magic rule (`FI\x01` at 8) knows an
/// image without reading its end, as AppImage's `AI\x02` does for AppImages.
pub const IMAGE_MARK_OFFSET: usize = 8;
pub const IMAGE_MARK: [u8; 3] = *b"FI\x01";

/// `launcher` with the [`IMAGE_MARK`] written in, refused if those bytes hold anything
/// else than zeros or the mark.
pub fn marked(launcher: &[u8]) -> Result<Vec<u8>> {
    let range = IMAGE_MARK_OFFSET..IMAGE_MARK_OFFSET + IMAGE_MARK.len();
    match launcher.get(range.clone()) {
        Some(b) if b == IMAGE_MARK || b.iter().all(|&x| x == 0) => {
            let mut bytes = launcher.to_vec();
            bytes[range].copy_from_slice(&IMAGE_MARK);
            Ok(bytes)
        }
        Some(_) => Err(ImageError::Launcher(
            "ELF identification bytes 8..11 are in use; the image mark cannot be written".into(),
        )),
        None => Err(ImageError::Launcher("too short for an ELF header".into())),
    }
}

/// End of the ELF file image: the furthest byte any header, section or segment covers.
/// This is the formula AppImage and uruntime use (section table end, every non-NOBITS
/// section's end), extended to program segments so a stripped binary is measured right.
pub fn elf_end(bytes: &[u8]) -> Result<u64> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| ImageError::Launcher(e.to_string()))?;
    let h = &elf.header;
    if !elf.is_64 || h.e_machine != goblin::elf::header::EM_X86_64 {
        return Err(ImageError::Launcher("not an x86_64 ELF".into()));
    }
    if h.e_type != goblin::elf::header::ET_EXEC && h.e_type != goblin::elf::header::ET_DYN {
        return Err(ImageError::Launcher("not an executable".into()));
    }
    let overflow = || ImageError::Launcher("ELF headers point past any file size".into());
    let span = |offset: u64, count: u64, size: u64| {
        count
            .checked_mul(size)
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(overflow)
    };
    let mut end = span(h.e_shoff, u64::from(h.e_shnum), u64::from(h.e_shentsize))?;
    end = end.max(span(
        h.e_phoff,
        u64::from(h.e_phnum),
        u64::from(h.e_phentsize),
    )?);
    for s in &elf.section_headers {
        if s.sh_type != goblin::elf::section_header::SHT_NOBITS {
            end = end.max(span(s.sh_offset, 1, s.sh_size)?);
        }
    }
    for p in &elf.program_headers {
        end = end.max(span(p.p_offset, 1, p.p_filesz)?);
    }
    if end > bytes.len() as u64 {
        return Err(ImageError::Launcher(
            "ELF headers point past the end of the file".into(),
        ));
    }
    Ok(end)
}

/// Whether `bytes` is an x86_64 executable that needs no dynamic loader or library: one
/// that runs on any host, as an embedded tool must.
pub fn is_static_executable(bytes: &[u8]) -> Result<bool> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| ImageError::Launcher(e.to_string()))?;
    if !elf.is_64 || elf.header.e_machine != goblin::elf::header::EM_X86_64 {
        return Err(ImageError::Launcher("not an x86_64 ELF".into()));
    }
    Ok(elf.interpreter.is_none() && elf.dynamic.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_test_binary_ends_within_its_file() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let end = elf_end(&exe).unwrap();
        assert!(end > 0 && end <= exe.len() as u64);
    }

    #[test]
    fn appended_bytes_do_not_move_the_end() {
        let mut exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let end = elf_end(&exe).unwrap();
        exe.extend_from_slice(&[0xAA; 10_000]);
        assert_eq!(elf_end(&exe).unwrap(), end);
    }

    #[test]
    fn text_and_empty_input_are_refused() {
        assert!(elf_end(b"").is_err());
        assert!(elf_end(b"#!/bin/sh\necho hi\n").is_err());
    }

    #[test]
    fn truncated_elf_is_refused() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_end(&exe[..exe.len() / 2]).is_err());
    }

    #[test]
    fn mark_is_written_at_byte_8_and_keeps_the_elf_valid() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let marked = marked(&exe).unwrap();
        assert_eq!(&marked[8..11], b"FI\x01");
        assert_eq!(&marked[..8], &exe[..8]);
        assert_eq!(elf_end(&marked).unwrap(), elf_end(&exe).unwrap());
        // Marking twice changes nothing.
        assert_eq!(super::marked(&marked).unwrap(), marked);
    }

    #[test]
    fn mark_refuses_bytes_already_in_use() {
        let mut exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        exe[9] = 7;
        assert!(marked(&exe).is_err());
    }
}
