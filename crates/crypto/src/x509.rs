//! X.509 v3 certificates and CRLs for the profile: P-256 keys, ECDSA with SHA-256, made with
//! `rcgen` and parsed with `x509-parser`, signatures checked with [`crate::ecdsa`].
//!
//! Roles are extended key usages under tessera's OID arc [`TESSERA_ARC`]
//! (`2.25.<UUID 0134d5c9-6601-43c9-aee6-754547c20a30>`, ITU-T X.667, which needs no
//! registration): role `n` is `TESSERA_ARC.1.n`. Roles that are also TLS identities carry the
//! standard `id-kp-clientAuth` / `id-kp-serverAuth` beside, so TLS stacks and `openssl verify`
//! accept the chains. The extension is non-critical.
//!
//! Times are Unix seconds. Serial numbers are 1 to 20 bytes, unsigned big-endian, non-zero.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DnType,
    IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, RevokedCertParams, SanType,
    SerialNumber, SignatureAlgorithm,
};
use std::net::IpAddr;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ecdsa::{PublicKey, Signature, SigningKey};
use crate::rng::{Rng, random_array};
use crate::{CryptoError, Result};

/// tessera's OID arc, dotted.
pub const TESSERA_ARC: &str = "2.25.1603563542103970129069162204869298736";

/// DER content octets of the arc's OID: `2.25` is `0x69`, then the UUID's integer in base 128.
const ARC_CONTENT: [u8; 19] = [
    0x69, 0x82, 0xb4, 0xea, 0xf2, 0xac, 0xe0, 0x8a, 0x8f, 0x93, 0xae, 0xf3, 0x9d, 0xa8, 0xd4, 0xbe,
    0x88, 0x94, 0x30,
];

const OID_EKU: [u64; 4] = [2, 5, 29, 37];
const OID_CLIENT_AUTH: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
const OID_SERVER_AUTH: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// ecdsa-with-SHA256, 1.2.840.10045.4.3.2.
const OID_ECDSA_SHA256: [u8; 8] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// A tessera certificate role, carried as an extended key usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `.1.1`: a card's device key (device authentication, pairing).
    Card,
    /// `.1.2`: a terminal (pairing with cards); also `id-kp-clientAuth`.
    Terminal,
    /// `.1.3`: a card's device-authentication key for the update service.
    Device,
    /// `.1.4`: an issuer's update-package signing key.
    PackageSigning,
    /// `.1.5`: a home server / home card; also `id-kp-serverAuth` and `id-kp-clientAuth`.
    Home,
    /// `.1.6`: an access card's control-channel key; also `id-kp-clientAuth`.
    Access,
    /// `.1.7`: a tessera server; also `id-kp-serverAuth`.
    Server,
    /// `.1.8`: a home card's payment key (e-money tokens only, never TLS).
    Payment,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 8] = [
        Role::Card,
        Role::Terminal,
        Role::Device,
        Role::PackageSigning,
        Role::Home,
        Role::Access,
        Role::Server,
        Role::Payment,
    ];

    /// The role's number under `TESSERA_ARC.1`.
    pub const fn number(self) -> u8 {
        match self {
            Role::Card => 1,
            Role::Terminal => 2,
            Role::Device => 3,
            Role::PackageSigning => 4,
            Role::Home => 5,
            Role::Access => 6,
            Role::Server => 7,
            Role::Payment => 8,
        }
    }

    /// The dotted OID.
    pub fn oid(self) -> String {
        format!("{TESSERA_ARC}.1.{}", self.number())
    }

    fn oid_content(self) -> Vec<u8> {
        let mut v = ARC_CONTENT.to_vec();
        v.extend_from_slice(&[0x01, self.number()]);
        v
    }

    fn standard_ekus(self) -> &'static [[u8; 8]] {
        match self {
            Role::Terminal | Role::Access => &[OID_CLIENT_AUTH],
            Role::Home => &[OID_SERVER_AUTH, OID_CLIENT_AUTH],
            Role::Server => &[OID_SERVER_AUTH],
            _ => &[],
        }
    }

    fn from_oid_content(c: &[u8]) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.oid_content() == c)
    }
}

/// A validity window, Unix seconds, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First second of validity.
    pub not_before: i64,
    /// Last second of validity.
    pub not_after: i64,
}

/// A DER-encoded X.509 certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl core::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.info() {
            Ok(i) => write!(f, "Certificate({:?}, {:?})", i.subject_cn, i.roles),
            Err(_) => f.write_str("Certificate(unparsable)"),
        }
    }
}

/// What a certificate says, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name.
    pub subject_cn: String,
    /// The issuer's common name.
    pub issuer_cn: String,
    /// The serial number, minimal unsigned big-endian.
    pub serial: Vec<u8>,
    /// The validity window.
    pub validity: Validity,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// basicConstraints pathLenConstraint.
    pub path_len: Option<u32>,
    /// tessera roles found in the extended key usages.
    pub roles: Vec<Role>,
    /// The subject's P-256 public key.
    pub public_key: PublicKey,
    /// The subjectAltName entries tessera understands (DNS names, IP addresses), in order.
    pub alt_names: Vec<AltName>,
}

/// A subjectAltName entry: how a TLS client names the server it expects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AltName {
    /// A DNS name (`dNSName`), ASCII, e.g. `localhost`.
    Dns(String),
    /// An IPv4 or IPv6 address (`iPAddress`).
    Ip(IpAddr),
}

impl AltName {
    fn to_rcgen(&self) -> Result<SanType> {
        match self {
            AltName::Dns(name) => {
                if name.is_empty() {
                    return Err(CryptoError::Certificate("empty DNS name".into()));
                }
                let ia5 = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|_| {
                    CryptoError::Certificate(format!("DNS name {name:?} is not ASCII"))
                })?;
                Ok(SanType::DnsName(ia5))
            }
            AltName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        }
    }
}

/// What [`issue`] puts in an end-entity (or intermediate CA) certificate.
#[derive(Clone, Copy, Debug)]
pub struct IssueRequest<'a> {
    /// Subject common name.
    pub subject_cn: &'a str,
    /// The subject's public key.
    pub public_key: &'a PublicKey,
    /// Roles (extended key usages).
    pub roles: &'a [Role],
    /// Serial number (see the module docs).
    pub serial: &'a [u8],
    /// Validity window.
    pub validity: Validity,
    /// `Some(path_len)` makes an intermediate CA instead of an end entity.
    pub ca_path_len: Option<u8>,
}

/// One revoked certificate in a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number.
    pub serial: Vec<u8>,
    /// When it was revoked (Unix seconds).
    pub revoked_at: i64,
}

/// A DER-encoded, not yet verified certificate revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
}

/// A CA's signing key wherever it lives: in memory ([`SigningKey`]) or in a token (a PKCS#11
/// key behind the server). It signs with ECDSA P-256 / SHA-256 over the message.
pub trait CaSigner {
    /// The key's public half.
    fn public_key(&self) -> PublicKey;
    /// ECDSA P-256 / SHA-256 signature over `message`.
    fn sign_message(&self, message: &[u8]) -> Result<Signature>;
}

impl CaSigner for SigningKey {
    fn public_key(&self) -> PublicKey {
        SigningKey::public_key(self)
    }
    fn sign_message(&self, message: &[u8]) -> Result<Signature> {
        Ok(self.sign(message))
    }
}

/// rcgen signer backed by a [`CaSigner`], so no second key parser is involved.
struct Signer<'a> {
    key: &'a dyn CaSigner,
    public: [u8; 65],
}

impl<'a> Signer<'a> {
    fn new(key: &'a dyn CaSigner) -> Self {
        Self { key, public: key.public_key().to_sec1_bytes() }
    }
}

impl rcgen::PublicKeyData for Signer<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for Signer<'_> {
    fn sign(&self, msg: &[u8]) -> core::result::Result<Vec<u8>, rcgen::Error> {
        self.key.sign_message(msg).map(|s| s.to_der()).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

struct Subject([u8; 65]);

impl rcgen::PublicKeyData for Subject {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn cert_err(e: impl core::fmt::Display) -> CryptoError {
    CryptoError::Certificate(e.to_string())
}

fn time(t: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t).map_err(cert_err)
}

fn check_serial(serial: &[u8]) -> Result<SerialNumber> {
    let s = strip_zeros(serial);
    if serial.len() > 20 || s.is_empty() {
        return Err(CryptoError::Certificate("serial must be 1 to 20 bytes, non-zero".into()));
    }
    Ok(SerialNumber::from_slice(s))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n..]
}

/// A fresh random 16-byte serial number (positive, top bit clear).
pub fn random_serial<R: Rng + ?Sized>(rng: &mut R) -> [u8; 16] {
    let mut s: [u8; 16] = random_array(rng);
    s[0] = (s[0] & 0x7F) | 0x01;
    s
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else if n < 0x100 {
        v.extend_from_slice(&[0x81, n as u8]);
    } else {
        v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

fn eku_extension(roles: &[Role]) -> Option<CustomExtension> {
    if roles.is_empty() {
        return None;
    }
    let mut oids: Vec<Vec<u8>> = Vec::new();
    for r in roles {
        oids.push(r.oid_content());
        for s in r.standard_ekus() {
            if !oids.iter().any(|o| o == s) {
                oids.push(s.to_vec());
            }
        }
    }
    let body: Vec<u8> = oids.iter().flat_map(|o| der_tlv(0x06, o)).collect();
    let mut ext = CustomExtension::from_oid_content(&OID_EKU, der_tlv(0x30, &body));
    ext.set_criticality(false);
    Some(ext)
}

fn base_params(cn: &str, serial: &[u8], validity: Validity) -> Result<CertificateParams> {
    if validity.not_after < validity.not_before {
        return Err(CryptoError::Certificate("validity ends before it starts".into()));
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(check_serial(serial)?);
    p.not_before = time(validity.not_before)?;
    p.not_after = time(validity.not_after)?;
    p.key_identifier_method = KeyIdMethod::Sha256;
    Ok(p)
}

/// Makes a self-signed root CA certificate for `key` (in memory or in a token).
pub fn self_signed_ca(
    key: &dyn CaSigner,
    common_name: &str,
    serial: &[u8],
    validity: Validity,
) -> Result<Certificate> {
    let mut p = base_params(common_name, serial, validity)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let c = p.self_signed(&Signer::new(key)).map_err(cert_err)?;
    Ok(Certificate { der: c.der().to_vec() })
}

/// Issues a certificate for `req.public_key`, signed by `ca_key` whose certificate is `ca`.
///
/// Refuses a CA key that does not match `ca`, or an issuer that is not a CA.
pub fn issue(
    ca_key: &dyn CaSigner,
    ca: &Certificate,
    req: &IssueRequest<'_>,
) -> Result<Certificate> {
    issue_with_alt_names(ca_key, ca, req, &[])
}

/// A TLS server identity made on the spot, for a server started without a configured
/// certificate: a fresh self-signed CA and a leaf certificate it issued for a fresh key.
pub struct LocalIdentity {
    /// The one-off CA (its key is dropped once the leaf is issued).
    pub ca: Certificate,
    /// The server's certificate.
    pub certificate: Certificate,
    /// The server's key.
    pub key: SigningKey,
}

/// Makes a [`LocalIdentity`]: a CA named `ca_name` and a leaf named `subject_cn` with `roles`
/// and `alt_names`, both valid for `validity`, keys from `rng`.
pub fn local_identity<R: Rng + ?Sized>(
    ca_name: &str,
    subject_cn: &str,
    roles: &[Role],
    alt_names: &[AltName],
    validity: Validity,
    rng: &mut R,
) -> Result<LocalIdentity> {
    let ca_key = SigningKey::generate(rng);
    let ca = self_signed_ca(&ca_key, ca_name, &random_serial(rng), validity)?;
    let key = SigningKey::generate(rng);
    let request = IssueRequest {
        subject_cn,
        public_key: &key.public_key(),
        roles,
        serial: &random_serial(rng),
        validity,
        ca_path_len: None,
    };
    let certificate = issue_with_alt_names(&ca_key, &ca, &request, alt_names)?;
    Ok(LocalIdentity { ca, certificate, key })
}

/// [`issue`], with a non-critical subjectAltName extension naming `alt_names` (none: no
/// extension). A TLS server certificate needs it: clients match the host they dialled against
/// these names, not the common name.
pub fn issue_with_alt_names(
    ca_key: &dyn CaSigner,
    ca: &Certificate,
    req: &IssueRequest<'_>,
    alt_names: &[AltName],
) -> Result<Certificate> {
    let ca_info = ca.info()?;
    if ca_info.public_key != ca_key.public_key() {
        return Err(CryptoError::Certificate("CA key does not match the CA certificate".into()));
    }
    if !ca_info.is_ca {
        return Err(CryptoError::Certificate("issuer is not a CA".into()));
    }
    let mut p = base_params(req.subject_cn, req.serial, req.validity)?;
    p.use_authority_key_identifier_extension = true;
    match req.ca_path_len {
        Some(n) => {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(n));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        None => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
    }
    p.custom_extensions.extend(eku_extension(req.roles));
    p.subject_alt_names = alt_names.iter().map(AltName::to_rcgen).collect::<Result<_>>()?;
    let issuer = Issuer::from_ca_cert_der(&ca.der.as_slice().into(), Signer::new(ca_key))
        .map_err(cert_err)?;
    let c = p.signed_by(&Subject(req.public_key.to_sec1_bytes()), &issuer).map_err(cert_err)?;
    Ok(Certificate { der: c.der().to_vec() })
}

impl Certificate {
    /// A certificate from DER; it must parse as X.509 with a P-256 key.
    pub fn from_der(der: Vec<u8>) -> Result<Self> {
        let c = Self { der };
        c.info()?;
        Ok(c)
    }

    /// A certificate read back from where this program stored it after [`Certificate::from_der`]
    /// accepted it (a database row): not parsed now, since every use parses it (and fails
    /// there, should the stored bytes have changed).
    pub fn from_stored_der(der: Vec<u8>) -> Self {
        Self { der }
    }

    /// A certificate from one PEM `CERTIFICATE` block.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
        if p.label != "CERTIFICATE" {
            return Err(CryptoError::Certificate(format!("PEM label {}", p.label)));
        }
        Self::from_der(p.contents)
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding.
    pub fn to_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.der)
    }

    fn parsed(&self) -> Result<X509Certificate<'_>> {
        let (rest, c) = X509Certificate::from_der(&self.der).map_err(cert_err)?;
        if !rest.is_empty() {
            return Err(CryptoError::Certificate("trailing bytes after certificate".into()));
        }
        Ok(c)
    }

    /// Parses the fields tessera uses.
    pub fn info(&self) -> Result<CertInfo> {
        info_of(&self.parsed()?)
    }
}

fn cn(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string()
}

fn info_of(c: &X509Certificate<'_>) -> Result<CertInfo> {
    let public_key = PublicKey::from_spki_der(c.public_key().raw)?;
    let bc = c.basic_constraints().map_err(cert_err)?;
    let (is_ca, path_len) =
        bc.map(|b| (b.value.ca, b.value.path_len_constraint)).unwrap_or((false, None));
    let mut roles = Vec::new();
    if let Some(eku) = c.extended_key_usage().map_err(cert_err)? {
        for oid in &eku.value.other {
            if let Some(r) = Role::from_oid_content(oid.as_bytes()) {
                roles.push(r);
            }
        }
    }
    let mut alt_names = Vec::new();
    if let Some(san) = c.subject_alternative_name().map_err(cert_err)? {
        use x509_parser::extensions::GeneralName;
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => alt_names.push(AltName::Dns((*d).to_string())),
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        alt_names.push(AltName::Ip(IpAddr::from(v4)));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        alt_names.push(AltName::Ip(IpAddr::from(v6)));
                    } else {
                        return Err(CryptoError::Certificate("malformed IP address name".into()));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        alt_names,
        subject_cn: cn(c.subject()),
        issuer_cn: cn(c.issuer()),
        serial: strip_zeros(c.raw_serial()).to_vec(),
        validity: Validity {
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
        },
        is_ca,
        path_len,
        roles,
        public_key,
    })
}

/// Checks one link: `c` is signed by `issuer_key` with ECDSA-SHA256.
fn check_signature(c: &X509Certificate<'_>, issuer_key: &PublicKey) -> Result<()> {
    if c.signature_algorithm.algorithm.as_bytes() != OID_ECDSA_SHA256
        || c.tbs_certificate.signature.algorithm != c.signature_algorithm.algorithm
    {
        return Err(CryptoError::Certificate("signature algorithm is not ECDSA-SHA256".into()));
    }
    let sig = Signature::from_der(&c.signature_value.data)?;
    issuer_key
        .verify(c.tbs_certificate.as_ref(), &sig)
        .map_err(|_| CryptoError::Certificate(format!("bad signature on {:?}", cn(c.subject()))))
}

fn check_time(c: &X509Certificate<'_>, at: i64) -> Result<()> {
    let v = c.validity();
    if at < v.not_before.timestamp() || at > v.not_after.timestamp() {
        return Err(CryptoError::Certificate(format!(
            "{:?} is not valid at {at}",
            cn(c.subject())
        )));
    }
    Ok(())
}

fn check_critical_extensions(c: &X509Certificate<'_>) -> Result<()> {
    use x509_parser::extensions::ParsedExtension;
    for e in c.extensions() {
        if e.critical
            && matches!(e.parsed_extension(), ParsedExtension::UnsupportedExtension { .. })
        {
            return Err(CryptoError::Certificate("unknown critical extension".into()));
        }
    }
    Ok(())
}

fn check_issuer(ca: &X509Certificate<'_>, depth_below: u32) -> Result<()> {
    let bc = ca.basic_constraints().map_err(cert_err)?;
    let Some(bc) = bc.filter(|b| b.value.ca) else {
        return Err(CryptoError::Certificate(format!("{:?} is not a CA", cn(ca.subject()))));
    };
    if bc.value.path_len_constraint.is_some_and(|n| depth_below > n) {
        return Err(CryptoError::Certificate("path length constraint exceeded".into()));
    }
    if let Some(ku) = ca.key_usage().map_err(cert_err)?
        && !ku.value.key_cert_sign()
    {
        return Err(CryptoError::Certificate("issuer may not sign certificates".into()));
    }
    Ok(())
}

/// Verifies `leaf` up to the trust anchor `root` through `intermediates` (leaf's issuer
/// first): every signature (ECDSA P-256/SHA-256), every validity window at `at`, names
/// chaining, basicConstraints cA and path length, keyCertSign, no unknown critical extension,
/// and, given `role`, that the leaf carries it. Returns the leaf's [`CertInfo`].
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    root: &Certificate,
    at: i64,
    role: Option<Role>,
) -> Result<CertInfo> {
    let mut chain: Vec<X509Certificate<'_>> = Vec::with_capacity(intermediates.len() + 2);
    chain.push(leaf.parsed()?);
    for c in intermediates {
        chain.push(c.parsed()?);
    }
    let anchor = root.parsed()?;
    // The anchor must be self-issued and self-signed.
    if anchor.subject().as_raw() != anchor.issuer().as_raw() {
        return Err(CryptoError::Certificate("trust anchor is not self-issued".into()));
    }
    check_signature(&anchor, &PublicKey::from_spki_der(anchor.public_key().raw)?)?;
    check_time(&anchor, at)?;
    check_critical_extensions(&anchor)?;
    chain.push(anchor);
    for (i, pair) in chain.windows(2).enumerate() {
        let (c, issuer) = (&pair[0], &pair[1]);
        if c.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(CryptoError::Certificate(format!(
                "{:?} was not issued by {:?}",
                cn(c.subject()),
                cn(issuer.subject())
            )));
        }
        check_signature(c, &PublicKey::from_spki_der(issuer.public_key().raw)?)?;
        check_time(c, at)?;
        check_critical_extensions(c)?;
        // Number of CA certificates below `issuer` in the path (RFC 5280 pathLen counts
        // intermediates, not the leaf).
        check_issuer(issuer, i as u32)?;
    }
    let info = info_of(&chain[0])?;
    if let Some(r) = role
        && !info.roles.contains(&r)
    {
        return Err(CryptoError::Certificate(format!("certificate lacks role {r:?}")));
    }
    Ok(info)
}

/// Makes a CRL signed by `ca_key` (whose certificate is `ca`).
pub fn make_crl(
    ca_key: &dyn CaSigner,
    ca: &Certificate,
    revoked: &[Revoked],
    this_update: i64,
    next_update: i64,
    crl_number: u64,
) -> Result<Crl> {
    if ca.info()?.public_key != ca_key.public_key() {
        return Err(CryptoError::Certificate("CA key does not match the CA certificate".into()));
    }
    let revoked_certs = revoked
        .iter()
        .map(|r| {
            Ok(RevokedCertParams {
                serial_number: check_serial(&r.serial)?,
                revocation_time: time(r.revoked_at)?,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let params = CertificateRevocationListParams {
        this_update: time(this_update)?,
        next_update: time(next_update)?,
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let issuer = Issuer::from_ca_cert_der(&ca.der.as_slice().into(), Signer::new(ca_key))
        .map_err(cert_err)?;
    let crl = params.signed_by(&issuer).map_err(cert_err)?;
    Ok(Crl { der: crl.der().to_vec() })
}

impl Crl {
    /// A CRL from DER (not yet verified).
    pub fn from_der(der: Vec<u8>) -> Self {
        Self { der }
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding (`X509 CRL`).
    pub fn to_pem(&self) -> String {
        to_pem("X509 CRL", &self.der)
    }

    /// Verifies the CRL against the CA that issued it (signature, issuer name, fresh at `at`)
    /// and says whether `serial` is revoked.
    pub fn is_revoked(&self, ca: &Certificate, serial: &[u8], at: i64) -> Result<bool> {
        let (rest, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&self.der)
                .map_err(cert_err)?;
        if !rest.is_empty() {
            return Err(CryptoError::Certificate("trailing bytes after CRL".into()));
        }
        let ca_parsed = ca.parsed()?;
        if crl.issuer().as_raw() != ca_parsed.subject().as_raw() {
            return Err(CryptoError::Certificate("CRL issued by another CA".into()));
        }
        if crl.signature_algorithm.algorithm.as_bytes() != OID_ECDSA_SHA256 {
            return Err(CryptoError::Certificate("CRL signature algorithm".into()));
        }
        let sig = Signature::from_der(&crl.signature_value.data)?;
        PublicKey::from_spki_der(ca_parsed.public_key().raw)?
            .verify(crl.tbs_cert_list.as_ref(), &sig)
            .map_err(|_| CryptoError::Certificate("bad CRL signature".into()))?;
        if at < crl.last_update().timestamp()
            || crl.next_update().is_some_and(|n| at > n.timestamp())
        {
            return Err(CryptoError::Certificate("CRL is not current".into()));
        }
        let wanted = strip_zeros(serial);
        Ok(crl.iter_revoked_certificates().any(|r| strip_zeros(r.raw_serial()) == wanted))
    }
}

fn to_pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(core::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;
