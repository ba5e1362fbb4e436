//! A model of the part of libxpc the binding uses: dictionaries, arrays, strings, integers,
//! booleans, UUIDs, with `xpc_retain`/`xpc_release` and leak accounting.
//!
//! Semantics follow `<xpc/xpc.h>` and Apple's XPC reference: `xpc_dictionary_create` returns an
//! owned object; a dictionary retains the values set in it and releases them when replaced or
//! when it dies; `xpc_dictionary_get_*` return borrowed values (0, false or NULL when the key is
//! missing or of another type); `xpc_get_type` returns `&_xpc_type_*`.
//!
//! An object's memory is never reused: when its last reference goes, its contents are freed and
//! it is marked dead, so a later release (over-release) or use (use after free) is detected and
//! counted instead of corrupting memory. [`stats`] gives the counts a test checks.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::atomic::{AtomicI64, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The object behind an `xpc_type_t`.
#[repr(C)]
#[derive(Debug)]
pub struct XpcType {
    tag: u8,
}

/// `XPC_TYPE_DICTIONARY`.
#[unsafe(no_mangle)]
pub static _xpc_type_dictionary: XpcType = XpcType { tag: 1 };
/// `XPC_TYPE_ARRAY`.
#[unsafe(no_mangle)]
pub static _xpc_type_array: XpcType = XpcType { tag: 2 };
/// `XPC_TYPE_STRING`.
#[unsafe(no_mangle)]
pub static _xpc_type_string: XpcType = XpcType { tag: 3 };
/// `XPC_TYPE_UINT64`.
#[unsafe(no_mangle)]
pub static _xpc_type_uint64: XpcType = XpcType { tag: 4 };
/// `XPC_TYPE_BOOL`.
#[unsafe(no_mangle)]
pub static _xpc_type_bool: XpcType = XpcType { tag: 5 };
/// `XPC_TYPE_UUID`.
#[unsafe(no_mangle)]
pub static _xpc_type_uuid: XpcType = XpcType { tag: 6 };

/// The value of a live object.
#[derive(Debug)]
pub(crate) enum Value {
    Dict(BTreeMap<CString, Ptr>),
    Array(Vec<Ptr>),
    Str(CString),
    U64(u64),
    Bool(bool),
    Uuid(Box<[u8; 16]>),
}

impl Value {
    fn ty(&self) -> &'static XpcType {
        match self {
            Value::Dict(_) => &_xpc_type_dictionary,
            Value::Array(_) => &_xpc_type_array,
            Value::Str(_) => &_xpc_type_string,
            Value::U64(_) => &_xpc_type_uint64,
            Value::Bool(_) => &_xpc_type_bool,
            Value::Uuid(_) => &_xpc_type_uuid,
        }
    }
}

/// An object pointer as stored inside a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Ptr(usize);

#[derive(Debug)]
pub(crate) struct Obj {
    refs: AtomicIsize,
    /// `None` once the last reference is gone.
    value: Mutex<Option<Value>>,
}

static LIVE: AtomicI64 = AtomicI64::new(0);
static CREATED: AtomicU64 = AtomicU64::new(0);
static OVER_RELEASES: AtomicU64 = AtomicU64::new(0);
static USE_AFTER_FREE: AtomicU64 = AtomicU64::new(0);
static FOREIGN: AtomicU64 = AtomicU64::new(0);
static ALL: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The xpc accounting, for tests: every count but `live` must stay 0, and `live` must return to
/// its value before the test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XpcStats {
    /// Objects created and not yet released to death.
    pub live: i64,
    /// Objects ever created.
    pub created: u64,
    /// `xpc_release` of an object whose references were all gone.
    pub over_releases: u64,
    /// Any use of a dead object.
    pub use_after_free: u64,
    /// A pointer passed to an xpc function that is no xpc object of this model.
    pub foreign: u64,
}

/// The current xpc accounting.
pub fn stats() -> XpcStats {
    XpcStats {
        live: LIVE.load(Ordering::SeqCst),
        created: CREATED.load(Ordering::SeqCst),
        over_releases: OVER_RELEASES.load(Ordering::SeqCst),
        use_after_free: USE_AFTER_FREE.load(Ordering::SeqCst),
        foreign: FOREIGN.load(Ordering::SeqCst),
    }
}

/// Creates an object holding one reference owned by the caller.
pub(crate) fn new(value: Value) -> *mut c_void {
    let obj = Box::new(Obj {
        refs: AtomicIsize::new(1),
        value: Mutex::new(Some(value)),
    });
    let p = Box::into_raw(obj);
    lock(&ALL)
        .get_or_insert_with(HashSet::new)
        .insert(p as usize);
    LIVE.fetch_add(1, Ordering::SeqCst);
    CREATED.fetch_add(1, Ordering::SeqCst);
    p.cast()
}

/// The object behind `p`, if it is one of ours (objects are never freed, so `'static`).
pub(crate) fn get(p: *mut c_void) -> Option<&'static Obj> {
    if p.is_null()
        || !lock(&ALL)
            .as_ref()
            .is_some_and(|s| s.contains(&(p as usize)))
    {
        if !p.is_null() {
            FOREIGN.fetch_add(1, Ordering::SeqCst);
        }
        return None;
    }
    // SAFETY: `p` was produced by `Box::into_raw` in `new` and is never freed.
    Some(unsafe { &*p.cast::<Obj>() })
}

/// Runs `f` on the live value of `p`; `None` (and counted) for a dead or foreign object.
pub(crate) fn with<R>(p: *mut c_void, f: impl FnOnce(&mut Value) -> R) -> Option<R> {
    let obj = get(p)?;
    let mut v = lock(&obj.value);
    match v.as_mut() {
        Some(v) => Some(f(v)),
        None => {
            USE_AFTER_FREE.fetch_add(1, Ordering::SeqCst);
            None
        }
    }
}

fn retain_ptr(p: Ptr) {
    // SAFETY: only called on pointers the model created.
    unsafe { xpc_retain(p.0 as *mut c_void) };
}

fn release_ptr(p: Ptr) {
    // SAFETY: as above.
    unsafe { xpc_release(p.0 as *mut c_void) };
}

/// `xpc_object_t xpc_retain(xpc_object_t object);`
///
/// # Safety
///
/// None beyond the C contract; invalid pointers are counted, not dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_retain(object: *mut c_void) -> *mut c_void {
    if let Some(obj) = get(object)
        && obj.refs.fetch_add(1, Ordering::SeqCst) <= 0
    {
        obj.refs.fetch_sub(1, Ordering::SeqCst);
        USE_AFTER_FREE.fetch_add(1, Ordering::SeqCst);
    }
    object
}

/// `void xpc_release(xpc_object_t object);`
///
/// # Safety
///
/// None beyond the C contract; invalid pointers are counted, not dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_release(object: *mut c_void) {
    let Some(obj) = get(object) else { return };
    let before = obj.refs.fetch_sub(1, Ordering::SeqCst);
    if before <= 0 {
        obj.refs.fetch_add(1, Ordering::SeqCst);
        OVER_RELEASES.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if before == 1 {
        let value = lock(&obj.value).take();
        LIVE.fetch_sub(1, Ordering::SeqCst);
        match value {
            Some(Value::Dict(m)) => m.into_values().for_each(release_ptr),
            Some(Value::Array(a)) => a.into_iter().for_each(release_ptr),
            _ => {}
        }
    }
}

/// `xpc_type_t xpc_get_type(xpc_object_t object);`
///
/// # Safety
///
/// None beyond the C contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_get_type(object: *mut c_void) -> *const XpcType {
    with(object, |v| v.ty() as *const XpcType).unwrap_or(std::ptr::null())
}

/// Copies a C string argument (NULL gives `None`).
///
/// # Safety
///
/// `s` is NULL or NUL-terminated.
unsafe fn cstring(s: *const c_char) -> Option<CString> {
    // SAFETY: the caller's contract.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_owned())
}

/// `xpc_object_t xpc_dictionary_create(const char *const *keys, const xpc_object_t *values,
/// size_t count);`
///
/// # Safety
///
/// `keys` and `values` point to `count` entries each (or `count` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_create(
    keys: *const *const c_char,
    values: *const *mut c_void,
    count: usize,
) -> *mut c_void {
    let mut m = BTreeMap::new();
    for i in 0..count {
        // SAFETY: the caller's contract: `count` keys and values.
        let (k, v) = unsafe { (*keys.add(i), *values.add(i)) };
        // SAFETY: a key is a NUL-terminated string.
        let Some(k) = (unsafe { cstring(k) }) else {
            continue;
        };
        if get(v).is_some() {
            retain_ptr(Ptr(v as usize));
            if let Some(old) = m.insert(k, Ptr(v as usize)) {
                release_ptr(old);
            }
        }
    }
    new(Value::Dict(m))
}

/// Sets `key` of dictionary `xdict` to a new object holding `value`.
///
/// # Safety
///
/// `key` is NULL or NUL-terminated.
pub(crate) unsafe fn dict_set(xdict: *mut c_void, key: *const c_char, value: Value) {
    // SAFETY: forwarded.
    let Some(key) = (unsafe { cstring(key) }) else {
        return;
    };
    let child = Ptr(new(value) as usize);
    let old = with(xdict, |v| match v {
        Value::Dict(m) => Ok(m.insert(key, child)),
        _ => Err(()),
    });
    match old {
        Some(Ok(Some(old))) => release_ptr(old),
        Some(Ok(None)) => {}
        // Not a live dictionary: the new value is nobody's.
        _ => release_ptr(child),
    }
}

/// The child object at `key` of `xdict` (borrowed), or NULL.
///
/// # Safety
///
/// `key` is NULL or NUL-terminated.
pub(crate) unsafe fn dict_get(xdict: *mut c_void, key: *const c_char) -> *mut c_void {
    if key.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let key = unsafe { CStr::from_ptr(key) };
    with(xdict, |v| match v {
        Value::Dict(m) => m.get(key).map(|p| p.0 as *mut c_void),
        _ => None,
    })
    .flatten()
    .unwrap_or(std::ptr::null_mut())
}

/// `void xpc_dictionary_set_uint64(xpc_object_t xdict, const char *key, uint64_t value);`
///
/// # Safety
///
/// `key` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_set_uint64(
    xdict: *mut c_void,
    key: *const c_char,
    value: u64,
) {
    // SAFETY: forwarded.
    unsafe { dict_set(xdict, key, Value::U64(value)) }
}

/// `void xpc_dictionary_set_string(xpc_object_t xdict, const char *key, const char *string);`
///
/// # Safety
///
/// `key` and `string` are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_set_string(
    xdict: *mut c_void,
    key: *const c_char,
    string: *const c_char,
) {
    // SAFETY: forwarded.
    if let Some(s) = unsafe { cstring(string) } {
        // SAFETY: forwarded.
        unsafe { dict_set(xdict, key, Value::Str(s)) }
    }
}

/// `void xpc_dictionary_set_bool(xpc_object_t xdict, const char *key, bool value);`
///
/// # Safety
///
/// `key` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_set_bool(
    xdict: *mut c_void,
    key: *const c_char,
    value: bool,
) {
    // SAFETY: forwarded.
    unsafe { dict_set(xdict, key, Value::Bool(value)) }
}

/// `void xpc_dictionary_set_uuid(xpc_object_t xdict, const char *key, const uuid_t uuid);`
///
/// # Safety
///
/// `key` is NUL-terminated; `uuid` points to 16 bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_set_uuid(
    xdict: *mut c_void,
    key: *const c_char,
    uuid: *const u8,
) {
    if uuid.is_null() {
        return;
    }
    let mut u = [0u8; 16];
    // SAFETY: 16 readable bytes by the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(uuid, u.as_mut_ptr(), 16) };
    // SAFETY: forwarded.
    unsafe { dict_set(xdict, key, Value::Uuid(Box::new(u))) }
}

/// `uint64_t xpc_dictionary_get_uint64(xpc_object_t xdict, const char *key);`
///
/// # Safety
///
/// `key` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_get_uint64(xdict: *mut c_void, key: *const c_char) -> u64 {
    // SAFETY: forwarded.
    unsafe { entry(xdict, key, as_u64) }.unwrap_or(0)
}

/// `f` applied to the value at `key` of `xdict`: `None` when the key is absent, `xdict` is not a
/// live dictionary of the model, or `f` finds another type there.
///
/// # Safety
///
/// `key` is NUL-terminated.
unsafe fn entry<R>(
    xdict: *mut c_void,
    key: *const c_char,
    f: impl FnOnce(&Value) -> Option<R>,
) -> Option<R> {
    // SAFETY: forwarded.
    let child = unsafe { dict_get(xdict, key) };
    with(child, |v| f(v)).flatten()
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U64(n) => Some(*n),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// The string's heap buffer, which lives as long as the string object (held by its container).
fn as_c_str(v: &Value) -> Option<*const c_char> {
    match v {
        Value::Str(s) => Some(s.as_ptr()),
        _ => None,
    }
}

/// The UUID's heap bytes, which live as long as the UUID object (held by its container).
fn as_uuid_ptr(v: &Value) -> Option<*const u8> {
    match v {
        Value::Uuid(u) => Some(u.as_ptr()),
        _ => None,
    }
}

/// `const char *xpc_dictionary_get_string(xpc_object_t xdict, const char *key);`
///
/// # Safety
///
/// `key` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_get_string(
    xdict: *mut c_void,
    key: *const c_char,
) -> *const c_char {
    // SAFETY: forwarded.
    unsafe { entry(xdict, key, as_c_str) }.unwrap_or(std::ptr::null())
}

/// `bool xpc_dictionary_get_bool(xpc_object_t xdict, const char *key);`
///
/// # Safety
///
/// `key` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_get_bool(xdict: *mut c_void, key: *const c_char) -> bool {
    // SAFETY: forwarded.
    unsafe { entry(xdict, key, as_bool) }.unwrap_or(false)
}

/// `const uint8_t *xpc_dictionary_get_uuid(xpc_object_t xdict, const char *key);`
///
/// # Safety
///
/// `key` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_get_uuid(
    xdict: *mut c_void,
    key: *const c_char,
) -> *const u8 {
    // SAFETY: forwarded.
    unsafe { entry(xdict, key, as_uuid_ptr) }.unwrap_or(std::ptr::null())
}

/// `xpc_object_t xpc_dictionary_get_value(xpc_object_t xdict, const char *key);`
///
/// # Safety
///
/// `key` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_dictionary_get_value(
    xdict: *mut c_void,
    key: *const c_char,
) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { dict_get(xdict, key) }
}

/// A new array owning `items` (each already one reference owned by the caller, given away).
pub(crate) fn array(items: Vec<*mut c_void>) -> *mut c_void {
    new(Value::Array(
        items.into_iter().map(|p| Ptr(p as usize)).collect(),
    ))
}

/// A new string object.
pub(crate) fn string(s: &str) -> *mut c_void {
    new(Value::Str(CString::new(s).unwrap_or_default()))
}

fn array_item(xarray: *mut c_void, index: usize) -> *mut c_void {
    with(xarray, |v| match v {
        Value::Array(a) => a.get(index).map(|p| p.0 as *mut c_void),
        _ => None,
    })
    .flatten()
    .unwrap_or(std::ptr::null_mut())
}

/// `size_t xpc_array_get_count(xpc_object_t xarray);`
///
/// # Safety
///
/// None beyond the C contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_array_get_count(xarray: *mut c_void) -> usize {
    with(
        xarray,
        |v| if let Value::Array(a) = v { a.len() } else { 0 },
    )
    .unwrap_or(0)
}

/// `xpc_object_t xpc_array_get_value(xpc_object_t xarray, size_t index);`
///
/// # Safety
///
/// None beyond the C contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_array_get_value(xarray: *mut c_void, index: usize) -> *mut c_void {
    array_item(xarray, index)
}

/// `const char *xpc_array_get_string(xpc_object_t xarray, size_t index);`
///
/// # Safety
///
/// None beyond the C contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xpc_array_get_string(xarray: *mut c_void, index: usize) -> *const c_char {
    with(array_item(xarray, index), |v| as_c_str(v))
        .flatten()
        .unwrap_or(std::ptr::null())
}

/// Reads a dictionary entry of the model's own objects, for the vmnet model.
pub(crate) fn read_u64(d: *mut c_void, key: &CStr) -> Option<u64> {
    // SAFETY: `key` is NUL-terminated.
    unsafe { entry(d, key.as_ptr(), as_u64) }
}

/// As [`read_u64`] for strings.
pub(crate) fn read_string(d: *mut c_void, key: &CStr) -> Option<String> {
    // SAFETY: `key` is NUL-terminated.
    unsafe {
        entry(d, key.as_ptr(), |v| match v {
            Value::Str(s) => s.to_str().ok().map(str::to_owned),
            _ => None,
        })
    }
}

/// As [`read_u64`] for booleans.
pub(crate) fn read_bool(d: *mut c_void, key: &CStr) -> Option<bool> {
    // SAFETY: `key` is NUL-terminated.
    unsafe { entry(d, key.as_ptr(), as_bool) }
}

/// As [`read_u64`] for UUIDs.
pub(crate) fn read_uuid(d: *mut c_void, key: &CStr) -> Option<[u8; 16]> {
    // SAFETY: `key` is NUL-terminated.
    unsafe {
        entry(d, key.as_ptr(), |v| match v {
            Value::Uuid(u) => Some(**u),
            _ => None,
        })
    }
}

/// Whether `d` is a live dictionary of this model.
pub(crate) fn is_dict(d: *mut c_void) -> bool {
    with(d, |v| matches!(v, Value::Dict(_))).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_values_and_accounting() {
        // SAFETY: the model's own API with valid arguments.
        unsafe {
            let d = xpc_dictionary_create(std::ptr::null(), std::ptr::null(), 0);
            xpc_dictionary_set_uint64(d, c"n".as_ptr(), 7);
            xpc_dictionary_set_string(d, c"s".as_ptr(), c"v".as_ptr());
            xpc_dictionary_set_bool(d, c"b".as_ptr(), true);
            xpc_dictionary_set_uuid(d, c"u".as_ptr(), [9u8; 16].as_ptr());
            assert_eq!(xpc_dictionary_get_uint64(d, c"n".as_ptr()), 7);
            assert_eq!(xpc_dictionary_get_uint64(d, c"s".as_ptr()), 0);
            assert_eq!(
                CStr::from_ptr(xpc_dictionary_get_string(d, c"s".as_ptr())),
                c"v"
            );
            assert!(xpc_dictionary_get_bool(d, c"b".as_ptr()));
            assert_eq!(*xpc_dictionary_get_uuid(d, c"u".as_ptr()), 9);
            assert!(xpc_dictionary_get_value(d, c"x".as_ptr()).is_null());
            assert!(std::ptr::eq(xpc_get_type(d), &_xpc_type_dictionary));
            let n = xpc_dictionary_get_value(d, c"n".as_ptr());
            xpc_retain(n);
            xpc_release(d);
            // The retained child survives its dictionary.
            assert_eq!(with(n, |v| matches!(v, Value::U64(7))), Some(true));
            let before = stats().over_releases;
            xpc_release(n);
            xpc_release(n);
            assert_eq!(stats().over_releases, before + 1);
        }
    }
}
