//! Scratch vectors kept from one batch to the next, so that the data path allocates nothing per
//! frame once it has seen its largest batch.
//!
//! The vectors a batch needs hold borrows of guest memory (`VolatileSlice<'m>`, `RxFrame<'s, 'm>`)
//! or raw pointers (`libc::iovec`), which cannot be kept in a long-lived struct as they are. They
//! are kept empty, under a type of the same size and alignment without the borrow, and
//! [`recycle`] turns an empty vector of one into the other keeping its buffer.

/// Empties `v` and returns its buffer as a vector of `U`.
///
/// When `T` and `U` have the same size and alignment, the standard library's in-place
/// collection reuses the buffer: no allocation and no free (the zero-allocation test of the data
/// path, `devices/tests/no_alloc.rs`, watches that this stays so). With different layouts it is
/// still correct, only not free.
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    // The closure never runs: the vector is empty.
    v.into_iter().map(|_| unreachable!()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycling_keeps_the_buffer_between_types_of_one_layout() {
        let mut v: Vec<(usize, usize)> = Vec::with_capacity(40);
        v.push((1, 2));
        let ptr = v.as_ptr() as usize;
        let w: Vec<[usize; 2]> = recycle(v);
        assert!(w.is_empty());
        assert_eq!(w.capacity(), 40);
        assert_eq!(w.as_ptr() as usize, ptr);
    }
}
