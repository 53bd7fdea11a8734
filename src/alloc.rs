//! The process's memory allocator: mimalloc, asked the way its fast path wants.
//!
//! mimalloc instead of glibc's malloc: a request allocates and frees many small objects on
//! whichever worker thread runs it; glibc's allocator took ~17% of the proxy's CPU under load.
//!
//! Not through the `mimalloc` crate's `MiMalloc`: it hands every allocation to
//! `mi_malloc_aligned` with the type's alignment, and mimalloc 3 serves an aligned request
//! whose size is not a power of two, whenever its free list for that size is empty, by
//! over-allocating from a larger size class. That list is then never refilled by these
//! requests, so the slow path repeats: 16 of the ~80 allocations of a proxied request took it.
//! Every mimalloc block is aligned to at least a machine word, so a request that needs no more
//! is a plain `mi_malloc`; only larger alignments use the aligned calls.
//!
//! Built without transparent huge pages (`no_thp`): mimalloc otherwise asks the kernel to back
//! its heap with 2 MiB pages, and each one is resident as soon as any of it is touched. That
//! put the idle process at 23.8 MiB (32.3 MiB with 1,000 routes and every policy) instead of
//! 16.9 (20.6), and made RSS move in 2 MiB steps with the heap's layout.
//! Imports: nothing of ours.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

/// The global allocator of the gatehouse binary (`#[global_allocator]` in `main.rs`).
pub struct Allocator;

// SAFETY: mimalloc returns blocks of at least the requested size aligned to at least `WORD`
// (`mi_malloc`, `mi_zalloc`, `mi_realloc`) or to the requested alignment (the `_aligned`
// calls), or null; `mi_free` takes any pointer either returned.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocations of every alignment come back aligned, zeroed when asked, and keep their
    /// contents across growth.
    #[test]
    fn alignment_zeroing_and_growth() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 40, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xAB, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xAB));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
