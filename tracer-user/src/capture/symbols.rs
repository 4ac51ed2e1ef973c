//! Native and kernel addresses → function, file:line, with blazesym. Its `Symbolizer` is neither
//! Send nor Sync, so it lives on the capture worker thread and nowhere else.

use std::path::Path;

use blazesym::symbolize::{
    source::{Kernel, Process, Source},
    Input, Symbolized, Symbolizer,
};

use crate::model::slow::Frame;

pub struct Symbols {
    sym: Symbolizer,
}

impl Symbols {
    pub fn new() -> Self {
        Self {
            sym: Symbolizer::new(),
        }
    }

    /// User-space stack of `pid`, innermost first. Return addresses point after their call, so
    /// every frame but the innermost is looked up one byte earlier to land on the call's line.
    pub fn user(&self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        let src = Source::Process(Process::new(pid.into()));
        self.resolve(&src, ips)
    }

    pub fn kernel(&self, ips: &[u64]) -> Vec<Frame> {
        let src = Source::Kernel(Kernel::default());
        self.resolve(&src, ips)
    }

    /// Like [`user`](Self::user) for addresses already adjusted by the caller (the profiler
    /// caches by lookup address, so it does the leaf/return-address adjustment itself).
    pub fn user_lookups(&self, pid: u32, lookups: &[u64]) -> Vec<Frame> {
        let src = Source::Process(Process::new(pid.into()));
        self.lookup(&src, lookups, lookups)
    }

    /// Addresses given as offsets into the ELF file at `path` (the profiler maps them itself):
    /// blazesym keeps each file parsed, so a miss costs a lookup, not a /proc/PID/maps parse.
    pub fn elf_offsets(&self, path: &Path, offsets: &[u64]) -> Vec<Frame> {
        let src = Source::Elf(blazesym::symbolize::source::Elf::new(path));
        let module = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let with_module = |mut f: Frame| {
            if f.module.is_none() {
                f.module.clone_from(&module);
            }
            f
        };
        match self.sym.symbolize(&src, Input::FileOffset(offsets)) {
            Ok(syms) => syms
                .iter()
                .zip(offsets)
                .map(|(s, off)| with_module(frame(s, *off)))
                .collect(),
            Err(e) => {
                log::debug!("symbolizing offsets in {}: {e}", path.display());
                offsets
                    .iter()
                    .map(|off| with_module(unknown(*off)))
                    .collect()
            }
        }
    }

    pub fn kernel_lookups(&self, lookups: &[u64]) -> Vec<Frame> {
        let src = Source::Kernel(Kernel::default());
        self.lookup(&src, lookups, lookups)
    }

    fn resolve(&self, src: &Source<'_>, ips: &[u64]) -> Vec<Frame> {
        let lookups: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
            .collect();
        self.lookup(src, &lookups, ips)
    }

    fn lookup(&self, src: &Source<'_>, lookups: &[u64], ips: &[u64]) -> Vec<Frame> {
        match self.sym.symbolize(src, Input::AbsAddr(lookups)) {
            Ok(syms) => syms.iter().zip(ips).map(|(s, ip)| frame(s, *ip)).collect(),
            Err(e) => {
                // One unreadable module must not cost the other frames: retry one by one.
                log::debug!("symbolization failed ({e}); retrying frame by frame");
                lookups
                    .iter()
                    .zip(ips)
                    .map(
                        |(addr, ip)| match self.sym.symbolize_single(src, Input::AbsAddr(*addr)) {
                            Ok(s) => frame(&s, *ip),
                            Err(_) => unknown(*ip),
                        },
                    )
                    .collect()
            }
        }
    }
}

fn unknown(ip: u64) -> Frame {
    Frame {
        function: format!("{ip:#x}"),
        file: None,
        line: None,
        module: None,
    }
}

fn frame(s: &Symbolized<'_>, ip: u64) -> Frame {
    let Some(sym) = s.as_sym() else {
        return unknown(ip);
    };
    let (file, line) = match &sym.code_info {
        Some(ci) => {
            let file = match &ci.dir {
                Some(dir) => dir.join(&ci.file),
                None => Path::new(&ci.file).to_owned(),
            };
            (Some(file.display().to_string()), ci.line)
        }
        None => (None, None),
    };
    Frame {
        function: sym.name.to_string(),
        file,
        line,
        module: sym.module.as_ref().and_then(|m| {
            Path::new(m)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function() -> u64 {
        marker_function as fn() -> u64 as usize as u64
    }

    #[test]
    fn symbolizes_own_function() {
        let s = Symbols::new();
        let frames = s.user(std::process::id(), &[marker_function()]);
        assert!(frames[0].function.contains("marker_function"), "{frames:?}");
    }
}
