//! The next definition of a function after this library, found by reading the loaded
//! objects' own symbol tables (GNU hash) instead of calling `dlsym(RTLD_NEXT, ..)`.
//!
//! Why: the constructor runs in every process the library is preloaded into, routing or
//! not, and thirteen `dlsym` calls cost about 20 us there (measured: posix_spawn of
//! /bin/true, p50 585 against 607 us), a quarter of all the library adds to an exec. The
//! loader has already mapped and relocated everything read here, so this is plain memory
//! reads: no lock, no allocation. Anything it is not sure of (no GNU hash table, a
//! non-function or IFUNC definition, two default versions) answers [`Lookup::AskLoader`],
//! and the caller falls back to `dlsym`.

use std::ffi::{c_char, c_int, c_void, CStr};

/// `struct link_map`'s public head (`<link.h>`).
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const c_char,
    l_ld: *const Dyn,
    l_next: *const LinkMap,
    l_prev: *const LinkMap,
}

/// `struct r_debug` (`<link.h>`): the loader's list of loaded objects.
#[repr(C)]
struct RDebug {
    r_version: c_int,
    r_map: *const LinkMap,
}

#[repr(C)]
struct Dyn {
    d_tag: i64,
    d_val: u64,
}

const DT_NULL: i64 = 0;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_GNU_HASH: i64 = 0x6fff_fef5;
const DT_VERSYM: i64 = 0x6fff_fff0;

const STT_FUNC: u8 = 2;
const STB_LOCAL: u8 = 0;
/// `versym` bit: a non-default version (`name@VER`, not `name@@VER`).
const VERSYM_HIDDEN: u16 = 0x8000;

extern "C" {
    static _r_debug: RDebug;
    /// This object's own dynamic section (defined by the linker in every ELF object).
    static _DYNAMIC: [Dyn; 0];
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(*mut c_void),
    /// No object after ours defines it (as `dlsym` would return null).
    Absent,
    /// Something here differs from the plain case; `dlsym` knows best.
    AskLoader,
}

/// Where the objects after ours start in the loader's list, or `None` when ours is not in
/// it (loaded with `dlmopen`, or a loader that keeps another list).
pub struct After(*const LinkMap);

/// Finds this object in the loader's list. At load time, from the constructor.
pub fn after_this_object() -> Option<After> {
    // SAFETY: the loader fills `_r_debug` before any constructor runs, and `_DYNAMIC` is
    // this object's own; only their addresses and the list's public fields are read.
    unsafe {
        let ours = _DYNAMIC.as_ptr();
        let mut l = _r_debug.r_map;
        while !l.is_null() {
            if (*l).l_ld == ours {
                return Some(After((*l).l_next));
            }
            l = (*l).l_next;
        }
    }
    None
}

/// Looks `name` up in each object after ours, in load order (the order `RTLD_NEXT` searches
/// the objects loaded at start-up in), and answers the first definition.
pub fn next(after: &After, name: &CStr) -> Lookup {
    let hash = gnu_hash(name.to_bytes());
    let mut l = after.0;
    while !l.is_null() {
        // SAFETY: an entry of the loader's list, with its dynamic section mapped.
        let map = unsafe { &*l };
        // SAFETY: as above; the tables it points to are mapped for as long as the object.
        match unsafe { lookup_in(map, name, hash) } {
            Lookup::Absent => {}
            other => return other,
        }
        l = map.l_next;
    }
    Lookup::Absent
}

fn gnu_hash(name: &[u8]) -> u32 {
    name.iter()
        .fold(5381u32, |h, &c| h.wrapping_mul(33).wrapping_add(c as u32))
}

/// The loader rewrites most dynamic-section addresses to run-time ones in place, except
/// where that section is read-only (the vDSO); an address below the load base has not
/// been moved yet.
fn at(map: &LinkMap, p: u64) -> usize {
    let p = p as usize;
    if p < map.l_addr {
        p + map.l_addr
    } else {
        p
    }
}

/// # Safety
/// `map` is a live entry of the loader's list.
unsafe fn lookup_in(map: &LinkMap, name: &CStr, hash: u32) -> Lookup {
    if map.l_ld.is_null() {
        return Lookup::Absent;
    }
    let (mut strtab, mut symtab, mut gnu, mut versym) = (0usize, 0usize, 0usize, 0usize);
    let mut d = map.l_ld;
    // SAFETY: the dynamic section ends with DT_NULL.
    unsafe {
        while (*d).d_tag != DT_NULL {
            match (*d).d_tag {
                DT_STRTAB => strtab = at(map, (*d).d_val),
                DT_SYMTAB => symtab = at(map, (*d).d_val),
                DT_GNU_HASH => gnu = at(map, (*d).d_val),
                DT_VERSYM => versym = at(map, (*d).d_val),
                _ => {}
            }
            d = d.add(1);
        }
    }
    if strtab == 0 || symtab == 0 {
        return Lookup::Absent;
    }
    if gnu == 0 {
        // Only the old SysV hash table: rare enough to leave to the loader.
        return Lookup::AskLoader;
    }
    // SAFETY: the GNU hash layout: nbuckets, symoffset, bloom_size, bloom_shift, then
    // bloom_size 64-bit words, nbuckets bucket words and the chain words.
    unsafe {
        let head = gnu as *const u32;
        let (nbuckets, symoffset, bloom_size, bloom_shift) =
            (*head, *head.add(1), *head.add(2), *head.add(3));
        if nbuckets == 0 || bloom_size == 0 {
            return Lookup::Absent;
        }
        let bloom = head.add(4) as *const u64;
        let word = *bloom.add(((hash / 64) % bloom_size) as usize);
        let mask = (1u64 << (hash % 64)) | (1u64 << ((hash >> bloom_shift) % 64));
        if word & mask != mask {
            return Lookup::Absent;
        }
        let buckets = bloom.add(bloom_size as usize) as *const u32;
        let chain = buckets.add(nbuckets as usize);
        let mut idx = *buckets.add((hash % nbuckets) as usize);
        if idx < symoffset {
            return Lookup::Absent;
        }
        // As the loader does for a lookup without a version: an unversioned definition
        // wins at once, else the one default (non-hidden) version.
        let mut versioned: Option<*const libc::Elf64_Sym> = None;
        let mut defaults = 0;
        loop {
            let h = *chain.add((idx - symoffset) as usize);
            if h | 1 == hash | 1 {
                let sym = (symtab as *const libc::Elf64_Sym).add(idx as usize);
                let sname = CStr::from_ptr((strtab as *const c_char).add((*sym).st_name as usize));
                if sname == name && (*sym).st_shndx != 0 && (*sym).st_info >> 4 != STB_LOCAL {
                    let v = if versym == 0 {
                        1
                    } else {
                        *(versym as *const u16).add(idx as usize)
                    };
                    if v & 0x7fff < 2 {
                        return found(map, sym);
                    }
                    if v & VERSYM_HIDDEN == 0 {
                        defaults += 1;
                        versioned = Some(sym);
                    }
                }
            }
            if h & 1 != 0 {
                break;
            }
            idx += 1;
        }
        match (defaults, versioned) {
            (0, _) => Lookup::Absent,
            (1, Some(sym)) => found(map, sym),
            _ => Lookup::AskLoader,
        }
    }
}

/// # Safety
/// `sym` is a defined symbol of `map`.
unsafe fn found(map: &LinkMap, sym: *const libc::Elf64_Sym) -> Lookup {
    // SAFETY: per the contract.
    let (info, value) = unsafe { ((*sym).st_info, (*sym).st_value) };
    if info & 0xf != STT_FUNC || value == 0 {
        // An IFUNC resolver, a symbol of another kind: the loader's rules apply.
        return Lookup::AskLoader;
    }
    Lookup::Found((map.l_addr + value as usize) as *mut c_void)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&CStr] = &[
        c"execve",
        c"execv",
        c"execvp",
        c"execvpe",
        c"fexecve",
        c"execveat",
        c"posix_spawn",
        c"posix_spawnp",
        c"pidfd_spawn",
        c"pidfd_spawnp",
        c"system",
        c"popen",
        c"pclose",
        // posix_spawn above and realpath have an older, hidden version beside the default
        // one in x86_64 glibc; getenv has one version; pidfd_spawn is absent before 2.39.
        c"realpath",
        c"getenv",
        c"no_such_function_anywhere",
    ];

    fn dlsym_next(name: &CStr) -> *mut c_void {
        // SAFETY: a lookup after the test binary, which holds this code.
        unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
    }

    #[test]
    fn answers_what_dlsym_next_answers() {
        let after = after_this_object().expect("the test binary is in the loader's list");
        for name in NAMES {
            match next(&after, name) {
                Lookup::Found(p) => assert_eq!(p, dlsym_next(name), "{name:?}"),
                Lookup::Absent => assert!(dlsym_next(name).is_null(), "{name:?}"),
                Lookup::AskLoader => panic!("{name:?}: a plain libc function left to dlsym"),
            }
        }
    }

    #[test]
    fn an_ifunc_is_left_to_the_loader() {
        // glibc picks memcpy's body by CPU at run time through an IFUNC resolver.
        let after = after_this_object().unwrap();
        assert_eq!(next(&after, c"memcpy"), Lookup::AskLoader);
    }

    #[test]
    fn the_hash_is_the_gnu_one() {
        // Values from the GNU hash definition (h = h * 33 + c, from 5381).
        assert_eq!(gnu_hash(b""), 5381);
        assert_eq!(gnu_hash(b"a"), 177670);
        assert_eq!(gnu_hash(b"printf"), 0x156b_2bb8);
    }
}
