//! A small RAII layer over the xpc objects vmnet exchanges: dictionaries and arrays (macOS only).
//!
//! vmnet takes its `interface_desc` as an xpc dictionary and answers with xpc dictionaries and
//! arrays. This module declares the few `<xpc/xpc.h>` functions it needs (they live in
//! libSystem, so no extra link) and wraps the objects in owning types whose `Drop` calls
//! `xpc_release` exactly once.
//!
//! ```no_run
//! use vmnet::xpc::XpcDictionary;
//!
//! let mut d = XpcDictionary::new();
//! d.set_u64(c"mtu", 1500);
//! assert_eq!(d.get_u64(c"mtu"), 1500);
//! ```

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::NonNull;

use crate::options::{Key, Value};

/// `xpc_object_t`.
pub type XpcObjectT = *mut c_void;

/// The opaque `struct _xpc_type_s` behind `xpc_type_t`.
#[repr(C)]
#[derive(Debug)]
pub struct XpcTypeS {
    _opaque: [u8; 0],
}

unsafe extern "C" {
    /// `xpc_object_t xpc_dictionary_create(const char *const *keys, const xpc_object_t *values,
    /// size_t count);`
    pub fn xpc_dictionary_create(
        keys: *const *const c_char,
        values: *const XpcObjectT,
        count: usize,
    ) -> XpcObjectT;
    /// `void xpc_dictionary_set_uint64(xpc_object_t xdict, const char *key, uint64_t value);`
    pub fn xpc_dictionary_set_uint64(xdict: XpcObjectT, key: *const c_char, value: u64);
    /// `void xpc_dictionary_set_string(xpc_object_t xdict, const char *key, const char *string);`
    pub fn xpc_dictionary_set_string(xdict: XpcObjectT, key: *const c_char, string: *const c_char);
    /// `void xpc_dictionary_set_bool(xpc_object_t xdict, const char *key, bool value);`
    pub fn xpc_dictionary_set_bool(xdict: XpcObjectT, key: *const c_char, value: bool);
    /// `void xpc_dictionary_set_uuid(xpc_object_t xdict, const char *key, const uuid_t uuid);`
    pub fn xpc_dictionary_set_uuid(xdict: XpcObjectT, key: *const c_char, uuid: *const u8);
    /// `uint64_t xpc_dictionary_get_uint64(xpc_object_t xdict, const char *key);`
    pub fn xpc_dictionary_get_uint64(xdict: XpcObjectT, key: *const c_char) -> u64;
    /// `const char *xpc_dictionary_get_string(xpc_object_t xdict, const char *key);`
    pub fn xpc_dictionary_get_string(xdict: XpcObjectT, key: *const c_char) -> *const c_char;
    /// `bool xpc_dictionary_get_bool(xpc_object_t xdict, const char *key);`
    pub fn xpc_dictionary_get_bool(xdict: XpcObjectT, key: *const c_char) -> bool;
    /// `const uint8_t *xpc_dictionary_get_uuid(xpc_object_t xdict, const char *key);`
    pub fn xpc_dictionary_get_uuid(xdict: XpcObjectT, key: *const c_char) -> *const u8;
    /// `xpc_object_t xpc_dictionary_get_value(xpc_object_t xdict, const char *key);`
    pub fn xpc_dictionary_get_value(xdict: XpcObjectT, key: *const c_char) -> XpcObjectT;
    /// `size_t xpc_array_get_count(xpc_object_t xarray);`
    pub fn xpc_array_get_count(xarray: XpcObjectT) -> usize;
    /// `xpc_object_t xpc_array_get_value(xpc_object_t xarray, size_t index);`
    pub fn xpc_array_get_value(xarray: XpcObjectT, index: usize) -> XpcObjectT;
    /// `const char *xpc_array_get_string(xpc_object_t xarray, size_t index);`
    pub fn xpc_array_get_string(xarray: XpcObjectT, index: usize) -> *const c_char;
    /// `xpc_type_t xpc_get_type(xpc_object_t object);`
    pub fn xpc_get_type(object: XpcObjectT) -> *const XpcTypeS;
    /// `xpc_object_t xpc_retain(xpc_object_t object);`
    pub fn xpc_retain(object: XpcObjectT) -> XpcObjectT;
    /// `void xpc_release(xpc_object_t object);`
    pub fn xpc_release(object: XpcObjectT);
    /// `XPC_TYPE_DICTIONARY` is `&_xpc_type_dictionary`.
    pub static _xpc_type_dictionary: XpcTypeS;
    /// `XPC_TYPE_ARRAY` is `&_xpc_type_array`.
    pub static _xpc_type_array: XpcTypeS;
}

/// Whether `obj` has the xpc type `ty`.
///
/// # Safety
///
/// `obj` must be a live xpc object.
unsafe fn has_type(obj: XpcObjectT, ty: *const XpcTypeS) -> bool {
    // SAFETY: the caller guarantees `obj` is a live xpc object.
    std::ptr::eq(unsafe { xpc_get_type(obj) }, ty)
}

/// An owned xpc object reference of any type (for serializations passed between processes).
///
/// ```no_run
/// use vmnet::xpc::{XpcDictionary, XpcObject};
///
/// let d = XpcDictionary::new();
/// let o: XpcObject = d.into_object();
/// assert!(!o.as_raw().is_null());
/// ```
#[derive(Debug)]
pub struct XpcObject {
    raw: NonNull<c_void>,
}

// SAFETY: xpc objects are reference counted with atomic operations and may be retained, released
// and passed between threads; this type allows no mutation through `&self`.
unsafe impl Send for XpcObject {}
// SAFETY: as above; `&XpcObject` only exposes the raw pointer for read-only framework calls.
unsafe impl Sync for XpcObject {}

impl XpcObject {
    /// Takes ownership of one reference (a `create`/`copy` result); `None` for NULL.
    ///
    /// # Safety
    ///
    /// `raw` must be NULL or a live xpc object reference that the caller owns and gives away.
    pub unsafe fn from_owned(raw: XpcObjectT) -> Option<Self> {
        NonNull::new(raw).map(|raw| Self { raw })
    }

    /// Retains a borrowed object; `None` for NULL.
    ///
    /// # Safety
    ///
    /// `raw` must be NULL or a live xpc object.
    pub unsafe fn retain(raw: XpcObjectT) -> Option<Self> {
        let raw = NonNull::new(raw)?;
        // SAFETY: the caller guarantees `raw` is a live xpc object.
        unsafe { xpc_retain(raw.as_ptr()) };
        Some(Self { raw })
    }

    /// The raw pointer, still owned by `self`.
    ///
    /// ```no_run
    /// let o = vmnet::xpc::XpcDictionary::new().into_object();
    /// let _raw = o.as_raw();
    /// ```
    pub fn as_raw(&self) -> XpcObjectT {
        self.raw.as_ptr()
    }
}

impl Clone for XpcObject {
    fn clone(&self) -> Self {
        // SAFETY: `self.raw` is a live xpc object we hold a reference to.
        unsafe { xpc_retain(self.raw.as_ptr()) };
        Self { raw: self.raw }
    }
}

impl Drop for XpcObject {
    fn drop(&mut self) {
        // SAFETY: we own exactly one reference and give it back exactly once.
        unsafe { xpc_release(self.raw.as_ptr()) }
    }
}

/// An owned xpc dictionary.
///
/// ```no_run
/// use vmnet::xpc::XpcDictionary;
///
/// let mut d = XpcDictionary::new();
/// d.set_string(c"start", c"192.168.105.1");
/// d.set_bool(c"tso", true);
/// assert_eq!(d.get_string(c"start").as_deref(), Some("192.168.105.1"));
/// assert!(d.get_bool(c"tso"));
/// ```
#[derive(Debug)]
pub struct XpcDictionary {
    obj: XpcObject,
}

impl Default for XpcDictionary {
    fn default() -> Self {
        Self::new()
    }
}

impl XpcDictionary {
    /// An empty dictionary.
    ///
    /// # Panics
    ///
    /// If xpc cannot allocate one.
    ///
    /// ```no_run
    /// let d = vmnet::xpc::XpcDictionary::new();
    /// assert_eq!(d.get_u64(c"missing"), 0);
    /// ```
    #[doc(alias = "xpc_dictionary_create")]
    pub fn new() -> Self {
        // SAFETY: NULL keys and values with a zero count are the documented way to create an
        // empty dictionary; the result is owned by us.
        let raw = unsafe { xpc_dictionary_create(std::ptr::null(), std::ptr::null(), 0) };
        // SAFETY: `raw` is a fresh owned reference or NULL.
        let obj = unsafe { XpcObject::from_owned(raw) }.expect("xpc_dictionary_create failed");
        Self { obj }
    }

    /// Retains a borrowed dictionary (such as a completion handler's argument, valid only for
    /// the duration of the handler); `None` for NULL or a non-dictionary.
    ///
    /// # Safety
    ///
    /// `raw` must be NULL or a live xpc object.
    pub unsafe fn retain(raw: XpcObjectT) -> Option<Self> {
        // SAFETY: the caller guarantees `raw` is NULL or live; NULL is checked first.
        if raw.is_null() || !unsafe { has_type(raw, &raw const _xpc_type_dictionary) } {
            return None;
        }
        // SAFETY: as above.
        unsafe { XpcObject::retain(raw) }.map(|obj| Self { obj })
    }

    /// Builds the dictionary from typed entries, resolving each key with `key_name`.
    ///
    /// ```no_run
    /// use vmnet::options::{Key, Value};
    /// use vmnet::xpc::XpcDictionary;
    ///
    /// let d = XpcDictionary::from_entries(
    ///     &[(Key::Mtu, Value::U64(1500))],
    ///     |_| Ok::<_, std::convert::Infallible>(c"vmnet_mtu"),
    /// ).unwrap();
    /// assert_eq!(d.get_u64(c"vmnet_mtu"), 1500);
    /// ```
    pub fn from_entries<E>(
        entries: &[(Key, Value)],
        mut key_name: impl FnMut(Key) -> Result<&'static CStr, E>,
    ) -> Result<Self, E> {
        let mut d = Self::new();
        for (k, v) in entries {
            let key = key_name(*k)?;
            match v {
                Value::U64(n) => d.set_u64(key, *n),
                Value::Bool(b) => d.set_bool(key, *b),
                Value::Uuid(u) => d.set_uuid(key, u),
                Value::Str(s) => {
                    // Option validation has refused interior NULs in names; addresses have none.
                    let s = CString::new(s.as_str()).unwrap_or_default();
                    d.set_string(key, &s)
                }
            }
        }
        Ok(d)
    }

    /// Sets an unsigned integer.
    ///
    /// ```no_run
    /// let mut d = vmnet::xpc::XpcDictionary::new();
    /// d.set_u64(c"k", 7);
    /// ```
    #[doc(alias = "xpc_dictionary_set_uint64")]
    pub fn set_u64(&mut self, key: &CStr, value: u64) {
        // SAFETY: we own a live dictionary and hold it mutably; `key` is NUL-terminated.
        unsafe { xpc_dictionary_set_uint64(self.as_raw(), key.as_ptr(), value) }
    }

    /// Sets a string (copied by xpc).
    ///
    /// ```no_run
    /// let mut d = vmnet::xpc::XpcDictionary::new();
    /// d.set_string(c"k", c"v");
    /// ```
    #[doc(alias = "xpc_dictionary_set_string")]
    pub fn set_string(&mut self, key: &CStr, value: &CStr) {
        // SAFETY: live dictionary held mutably; both strings are NUL-terminated and xpc copies
        // the value.
        unsafe { xpc_dictionary_set_string(self.as_raw(), key.as_ptr(), value.as_ptr()) }
    }

    /// Sets a boolean.
    ///
    /// ```no_run
    /// let mut d = vmnet::xpc::XpcDictionary::new();
    /// d.set_bool(c"k", true);
    /// ```
    #[doc(alias = "xpc_dictionary_set_bool")]
    pub fn set_bool(&mut self, key: &CStr, value: bool) {
        // SAFETY: live dictionary held mutably; `key` is NUL-terminated.
        unsafe { xpc_dictionary_set_bool(self.as_raw(), key.as_ptr(), value) }
    }

    /// Sets a UUID (16 bytes, copied by xpc).
    ///
    /// ```no_run
    /// let mut d = vmnet::xpc::XpcDictionary::new();
    /// d.set_uuid(c"k", &[1; 16]);
    /// ```
    #[doc(alias = "xpc_dictionary_set_uuid")]
    pub fn set_uuid(&mut self, key: &CStr, uuid: &[u8; 16]) {
        // SAFETY: live dictionary held mutably; `uuid` points to the 16 bytes of a `uuid_t`.
        unsafe { xpc_dictionary_set_uuid(self.as_raw(), key.as_ptr(), uuid.as_ptr()) }
    }

    /// An unsigned integer (0 when missing or of another type, as xpc answers).
    ///
    /// ```no_run
    /// assert_eq!(vmnet::xpc::XpcDictionary::new().get_u64(c"k"), 0);
    /// ```
    #[doc(alias = "xpc_dictionary_get_uint64")]
    pub fn get_u64(&self, key: &CStr) -> u64 {
        // SAFETY: live dictionary; `key` is NUL-terminated.
        unsafe { xpc_dictionary_get_uint64(self.as_raw(), key.as_ptr()) }
    }

    /// Whether the key is present at all.
    ///
    /// ```no_run
    /// assert!(!vmnet::xpc::XpcDictionary::new().contains(c"k"));
    /// ```
    #[doc(alias = "xpc_dictionary_get_value")]
    pub fn contains(&self, key: &CStr) -> bool {
        // SAFETY: live dictionary; `key` is NUL-terminated; the result is only compared to NULL.
        !unsafe { xpc_dictionary_get_value(self.as_raw(), key.as_ptr()) }.is_null()
    }

    /// A string, copied out (`None` when missing, of another type or not UTF-8).
    ///
    /// ```no_run
    /// assert_eq!(vmnet::xpc::XpcDictionary::new().get_string(c"k"), None);
    /// ```
    #[doc(alias = "xpc_dictionary_get_string")]
    pub fn get_string(&self, key: &CStr) -> Option<String> {
        // SAFETY: live dictionary; `key` is NUL-terminated.
        let p = unsafe { xpc_dictionary_get_string(self.as_raw(), key.as_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-NULL result is a NUL-terminated string owned by the dictionary, which
        // outlives this copy.
        unsafe { CStr::from_ptr(p) }
            .to_str()
            .ok()
            .map(str::to_owned)
    }

    /// A boolean (false when missing).
    ///
    /// ```no_run
    /// assert!(!vmnet::xpc::XpcDictionary::new().get_bool(c"k"));
    /// ```
    #[doc(alias = "xpc_dictionary_get_bool")]
    pub fn get_bool(&self, key: &CStr) -> bool {
        // SAFETY: live dictionary; `key` is NUL-terminated.
        unsafe { xpc_dictionary_get_bool(self.as_raw(), key.as_ptr()) }
    }

    /// A UUID, copied out.
    ///
    /// ```no_run
    /// assert_eq!(vmnet::xpc::XpcDictionary::new().get_uuid(c"k"), None);
    /// ```
    #[doc(alias = "xpc_dictionary_get_uuid")]
    pub fn get_uuid(&self, key: &CStr) -> Option<[u8; 16]> {
        // SAFETY: live dictionary; `key` is NUL-terminated.
        let p = unsafe { xpc_dictionary_get_uuid(self.as_raw(), key.as_ptr()) };
        if p.is_null() {
            return None;
        }
        let mut out = [0u8; 16];
        // SAFETY: a non-NULL result points to the 16 bytes of a `uuid_t` owned by the dictionary.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), 16) };
        Some(out)
    }

    /// The raw pointer, still owned by `self`.
    ///
    /// ```no_run
    /// assert!(!vmnet::xpc::XpcDictionary::new().as_raw().is_null());
    /// ```
    pub fn as_raw(&self) -> XpcObjectT {
        self.obj.as_raw()
    }

    /// The dictionary as an untyped owned object.
    ///
    /// ```no_run
    /// let _o = vmnet::xpc::XpcDictionary::new().into_object();
    /// ```
    pub fn into_object(self) -> XpcObject {
        self.obj
    }
}

/// An owned xpc array. Arrays come from the framework (`vmnet::shared_interface_list()` reads
/// one).
#[derive(Debug)]
pub struct XpcArray {
    obj: XpcObject,
}

impl XpcArray {
    /// Takes ownership of an array reference; `None` for NULL or a non-array.
    ///
    /// # Safety
    ///
    /// `raw` must be NULL or a live xpc object reference that the caller owns and gives away.
    pub unsafe fn from_owned(raw: XpcObjectT) -> Option<Self> {
        // SAFETY: the caller gives away a live reference or NULL.
        let obj = unsafe { XpcObject::from_owned(raw) }?;
        // SAFETY: `obj` is live. A non-array is released by `obj`'s Drop.
        unsafe { has_type(obj.as_raw(), &raw const _xpc_type_array) }.then_some(Self { obj })
    }

    /// Retains a borrowed array; `None` for NULL or a non-array.
    ///
    /// # Safety
    ///
    /// `raw` must be NULL or a live xpc object.
    pub unsafe fn retain(raw: XpcObjectT) -> Option<Self> {
        // SAFETY: NULL is checked first; otherwise the caller guarantees liveness.
        if raw.is_null() || !unsafe { has_type(raw, &raw const _xpc_type_array) } {
            return None;
        }
        // SAFETY: as above.
        unsafe { XpcObject::retain(raw) }.map(|obj| Self { obj })
    }

    /// The number of elements.
    ///
    /// ```no_run
    /// # fn f(a: &vmnet::xpc::XpcArray) { let _ = a.len(); }
    /// ```
    #[doc(alias = "xpc_array_get_count")]
    pub fn len(&self) -> usize {
        // SAFETY: live array.
        unsafe { xpc_array_get_count(self.obj.as_raw()) }
    }

    /// Whether the array is empty.
    ///
    /// ```no_run
    /// # fn f(a: &vmnet::xpc::XpcArray) { let _ = a.is_empty(); }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string elements, copied out (non-string elements are skipped).
    ///
    /// ```no_run
    /// # fn f(a: &vmnet::xpc::XpcArray) { for s in a.strings() { println!("{s}"); } }
    /// ```
    #[doc(alias = "xpc_array_get_string")]
    pub fn strings(&self) -> Vec<String> {
        (0..self.len())
            .filter_map(|i| {
                // SAFETY: live array, index in bounds.
                let p = unsafe { xpc_array_get_string(self.obj.as_raw(), i) };
                if p.is_null() {
                    return None;
                }
                // SAFETY: a non-NULL result is a NUL-terminated string owned by the array.
                unsafe { CStr::from_ptr(p) }
                    .to_str()
                    .ok()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The raw element at `index`, borrowed from the array (NULL when out of bounds).
    ///
    /// ```no_run
    /// # fn f(a: &vmnet::xpc::XpcArray) { let _ = a.get_raw(0); }
    /// ```
    #[doc(alias = "xpc_array_get_value")]
    pub fn get_raw(&self, index: usize) -> XpcObjectT {
        if index >= self.len() {
            return std::ptr::null_mut();
        }
        // SAFETY: live array, index in bounds.
        unsafe { xpc_array_get_value(self.obj.as_raw(), index) }
    }
}
