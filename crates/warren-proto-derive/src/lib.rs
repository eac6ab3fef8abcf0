//! `#[derive(Encode, Decode)]` for warren-proto. See the `warren-proto` crate for the
//! attributes and the wire format.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitInt, parse_macro_input};

/// Options from `#[proto(...)]` on a type, a field or a variant.
#[derive(Default)]
struct Options {
    max_len: Option<LitInt>,
    max_bytes: Option<LitInt>,
    varint: bool,
    default: bool,
    tag: Option<LitInt>,
}

fn options(attrs: &[syn::Attribute]) -> syn::Result<Options> {
    let mut out = Options::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("proto")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("max_len") {
                out.max_len = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("max_bytes") {
                out.max_bytes = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("tag") {
                out.tag = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("varint") {
                out.varint = true;
            } else if meta.path.is_ident("default") {
                out.default = true;
            } else {
                return Err(meta.error("expected max_len, max_bytes, varint, default or tag"));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

struct Field {
    /// How the field is reached: `name` or `0`.
    member: syn::Member,
    /// The local variable holding it while encoding or decoding.
    binding: syn::Ident,
    ty: syn::Type,
    label: String,
    options: Options,
}

fn fields(fields: &Fields) -> syn::Result<Vec<Field>> {
    let mut out = Vec::new();
    let mut seen_default = false;
    for (i, field) in fields.iter().enumerate() {
        let options = options(&field.attrs)?;
        if options.max_bytes.is_some() || options.tag.is_some() {
            return Err(syn::Error::new(field.span(), "max_bytes and tag belong on types and variants"));
        }
        if seen_default && !options.default {
            return Err(syn::Error::new(
                field.span(),
                "fields after a #[proto(default)] field must be #[proto(default)] too: only trailing fields can be missing",
            ));
        }
        seen_default |= options.default;
        let (member, label) = match &field.ident {
            Some(ident) => (syn::Member::Named(ident.clone()), ident.to_string()),
            None => (syn::Member::Unnamed(syn::Index::from(i)), i.to_string()),
        };
        out.push(Field { member, binding: format_ident!("__field{}", i), ty: field.ty.clone(), label, options });
    }
    Ok(out)
}

/// Statements encoding the bound fields, each under its length limit.
fn encode_fields(fields: &[Field], type_max_len: &Option<LitInt>) -> TokenStream2 {
    let steps = fields.iter().map(|f| {
        let binding = &f.binding;
        let label = &f.label;
        let encode = if f.options.varint {
            quote! { ::warren_proto::VarInt::encode_varint(#binding, __w) }
        } else {
            quote! { ::warren_proto::Encode::encode(#binding, __w) }
        };
        match f.options.max_len.as_ref().or(type_max_len.as_ref()) {
            Some(limit) => quote! {
                let __prev = __w.set_max_len(#limit);
                let __result = #encode;
                __w.set_max_len(__prev);
                __result.map_err(|e| e.in_field(#label))?;
            },
            None => quote! { #encode.map_err(|e| e.in_field(#label))?; },
        }
    });
    quote! { #(#steps)* }
}

/// Statements decoding each field into its binding.
fn decode_fields(fields: &[Field], type_max_len: &Option<LitInt>) -> TokenStream2 {
    let steps = fields.iter().map(|f| {
        let binding = &f.binding;
        let label = &f.label;
        let ty = &f.ty;
        let decode = if f.options.varint {
            quote! { <#ty as ::warren_proto::VarInt>::decode_varint(__r).await }
        } else {
            quote! { <#ty as ::warren_proto::Decode>::decode(__r).await }
        };
        let limited = match f.options.max_len.as_ref().or(type_max_len.as_ref()) {
            Some(limit) => quote! {{
                let __prev = __r.set_max_len(#limit);
                let __result = #decode;
                __r.set_max_len(__prev);
                __result.map_err(|e| e.in_field(#label))?
            }},
            None => quote! { #decode.map_err(|e| e.in_field(#label))? },
        };
        if f.options.default {
            quote! {
                let #binding: #ty = if __r.at_end().await? { ::core::default::Default::default() } else { #limited };
            }
        } else {
            quote! { let #binding: #ty = #limited; }
        }
    });
    quote! { #(#steps)* }
}

/// Statements decoding each field from buffered bytes (the synchronous fast path); any
/// shortfall returns `None` from the enclosing function.
fn decode_fields_buffered(fields: &[Field], type_max_len: &Option<LitInt>) -> TokenStream2 {
    let steps = fields.iter().map(|f| {
        let binding = &f.binding;
        let ty = &f.ty;
        let decode = if f.options.varint {
            quote! { <#ty as ::warren_proto::VarInt>::decode_varint_buffered(__b) }
        } else {
            quote! { <#ty as ::warren_proto::Decode>::decode_buffered(__b) }
        };
        let limited = match f.options.max_len.as_ref().or(type_max_len.as_ref()) {
            Some(limit) => quote! {{
                let __prev = __b.set_max_len(#limit);
                let __result = #decode;
                __b.set_max_len(__prev);
                __result?
            }},
            None => quote! { #decode? },
        };
        let guard = f.options.default.then(|| {
            quote! {
                // Whether an older peer's message ends here is only known to the async path.
                if __b.is_empty() {
                    return None;
                }
            }
        });
        quote! {
            #guard
            let #binding: #ty = #limited;
        }
    });
    quote! { #(#steps)* }
}

/// `Self { a: __field0, .. }`, `Self(__field0, ..)` or `Self` for the given path.
fn construct(path: TokenStream2, shape: &Fields, fields: &[Field]) -> TokenStream2 {
    let bindings = fields.iter().map(|f| &f.binding);
    match shape {
        Fields::Named(_) => {
            let members = fields.iter().map(|f| &f.member);
            quote! { #path { #(#members: #bindings),* } }
        }
        Fields::Unnamed(_) => quote! { #path ( #(#bindings),* ) },
        Fields::Unit => quote! { #path },
    }
}

/// A pattern binding every field by reference: `Self { a: __field0, .. }`.
fn pattern(path: TokenStream2, shape: &Fields, fields: &[Field]) -> TokenStream2 {
    construct(path, shape, fields)
}

fn add_bounds(generics: &syn::Generics, bounds: &[TokenStream2]) -> syn::Generics {
    let mut generics = generics.clone();
    for param in generics.type_params_mut() {
        for bound in bounds {
            param.bounds.push(syn::parse2(bound.clone()).expect("a valid bound"));
        }
    }
    generics
}

fn expand(input: DeriveInput, encode: bool) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let name_str = name.to_string();
    let type_options = options(&input.attrs)?;
    if type_options.varint || type_options.default || type_options.tag.is_some() {
        return Err(syn::Error::new(input.span(), "on a type, #[proto] takes only max_len and max_bytes"));
    }
    let max_len = &type_options.max_len;

    let (body_encode, body_decode, body_buffered) = match &input.data {
        Data::Struct(data) => {
            let fields = fields(&data.fields)?;
            let pat = pattern(quote! { Self }, &data.fields, &fields);
            let encode_steps = encode_fields(&fields, max_len);
            let decode_steps = decode_fields(&fields, max_len);
            let buffered_steps = decode_fields_buffered(&fields, max_len);
            let build = construct(quote! { Self }, &data.fields, &fields);
            (
                quote! {
                    #[allow(unused_variables)]
                    let #pat = self;
                    #encode_steps
                    Ok(())
                },
                quote! {
                    #decode_steps
                    Ok(#build)
                },
                quote! {
                    #buffered_steps
                    Some(#build)
                },
            )
        }
        Data::Enum(data) => {
            let mut encode_arms = Vec::new();
            let mut decode_arms = Vec::new();
            let mut buffered_arms = Vec::new();
            let mut tags = std::collections::BTreeSet::new();
            for (index, variant) in data.variants.iter().enumerate() {
                let variant_options = options(&variant.attrs)?;
                let tag: u64 = match &variant_options.tag {
                    Some(lit) => lit.base10_parse()?,
                    None => index as u64,
                };
                if !tags.insert(tag) {
                    return Err(syn::Error::new(variant.span(), format!("tag {tag} is used twice")));
                }
                let ident = &variant.ident;
                let label = ident.to_string();
                let fields = fields(&variant.fields)?;
                let variant_max_len = variant_options.max_len.clone().or_else(|| max_len.clone());
                let pat = pattern(quote! { Self::#ident }, &variant.fields, &fields);
                let encode_steps = encode_fields(&fields, &variant_max_len);
                let decode_steps = decode_fields(&fields, &variant_max_len);
                let buffered_steps = decode_fields_buffered(&fields, &variant_max_len);
                let build = construct(quote! { Self::#ident }, &variant.fields, &fields);
                encode_arms.push(quote! {
                    #pat => {
                        __w.put_varint(#tag);
                        (|| -> ::core::result::Result<(), ::warren_proto::EncodeError> {
                            #encode_steps
                            Ok(())
                        })().map_err(|e| e.in_field(#label))
                    }
                });
                buffered_arms.push(quote! {
                    #tag => {
                        #buffered_steps
                        Some(#build)
                    }
                });
                decode_arms.push(quote! {
                    #tag => {
                        let __result: ::core::result::Result<Self, ::warren_proto::DecodeError> = async {
                            #decode_steps
                            Ok(#build)
                        }.await;
                        __result.map_err(|e| e.within(::warren_proto::PathSegment::Variant(#label)))
                    }
                });
            }
            (
                quote! {
                    match self { #(#encode_arms)* }
                },
                quote! {
                    match __r.read_varint().await? {
                        #(#decode_arms)*
                        __other => Err(::warren_proto::DecodeError::new(::warren_proto::DecodeErrorKind::UnknownTag(__other))),
                    }
                },
                quote! {
                    match __b.varint()? {
                        #(#buffered_arms)*
                        _ => None,
                    }
                },
            )
        }
        Data::Union(_) => return Err(syn::Error::new(input.span(), "unions cannot be derived")),
    };

    if encode {
        let generics = add_bounds(&input.generics, &[quote! { ::warren_proto::Encode }]);
        let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
        Ok(quote! {
            impl #impl_generics ::warren_proto::Encode for #name #ty_generics #where_clause {
                fn encode(&self, __w: &mut ::warren_proto::Writer) -> ::core::result::Result<(), ::warren_proto::EncodeError> {
                    #body_encode
                }
            }
        })
    } else {
        let generics = add_bounds(
            &input.generics,
            &[quote! { ::warren_proto::Decode }, quote! { ::warren_proto::Encode }, quote! { Send }],
        );
        let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
        let max_len_const = max_len.as_ref().map(|n| quote! { const MAX_LEN: u64 = #n; });
        let max_bytes_const = type_options.max_bytes.as_ref().map(|n| quote! { const MAX_BYTES: u64 = #n; });
        Ok(quote! {
            impl #impl_generics ::warren_proto::Decode for #name #ty_generics #where_clause {
                fn decode_buffered(__b: &mut ::warren_proto::Buffered<'_>) -> ::core::option::Option<Self> {
                    #body_buffered
                }

                async fn decode<__R: ::warren_proto::__private::AsyncRead + Unpin + Send>(
                    __r: &mut ::warren_proto::Reader<__R>,
                ) -> ::core::result::Result<Self, ::warren_proto::DecodeError> {
                    #body_decode
                }
            }

            impl #impl_generics ::warren_proto::Message for #name #ty_generics #where_clause {
                const NAME: &'static str = #name_str;
                #max_len_const
                #max_bytes_const
            }
        })
    }
}

/// Derives `warren_proto::Encode`.
#[proc_macro_derive(Encode, attributes(proto))]
pub fn derive_encode(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input, true).unwrap_or_else(|e| e.to_compile_error()).into()
}

/// Derives `warren_proto::Decode` and `warren_proto::Message` (the latter needs `Encode` too,
/// so derive both).
#[proc_macro_derive(Decode, attributes(proto))]
pub fn derive_decode(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input, false).unwrap_or_else(|e| e.to_compile_error()).into()
}
