//! Deploying the program through the upgradeable loader (BPF loader v3), as
//! `solana program deploy` does: a buffer account written in chunks, then deployed
//! (or upgraded) from it in one transaction. Works over any [`Chain`]; on the RPC
//! backend the chunk writes are pipelined ([`Chain::send_all`]).
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::bpf_loader_upgradeable::{self as loader, UpgradeableLoaderState};
use anchor_lang::solana_program::instruction::Instruction;
use solana_keypair::Keypair;
use solana_signer::Signer;

use crate::chain::{sign_legacy, wire_size, Chain, ChainError, PACKET_DATA_SIZE};
use crate::error::{DeployError, Missing};

type Result<T> = std::result::Result<T, ChainError>;

/// Bytes of a ProgramData account before the program itself: tag (u32), slot (u64),
/// Option<authority> (1 + 32).
const PROGRAM_DATA_METADATA: usize = UpgradeableLoaderState::size_of_programdata_metadata();

/// What is at a program address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgramState {
    /// Nothing: the program can be deployed there.
    Missing,
    /// A program of the upgradeable loader.
    Upgradeable {
        /// Who may upgrade it (`None`: immutable, e.g. preloaded with `--bpf-program`).
        authority: Option<Pubkey>,
        /// The slot it was last deployed in.
        slot: u64,
        /// Room for the program's bytes (its ProgramData length less the metadata).
        max_len: usize,
        /// The deployed bytes, trailing zero padding included.
        bytes: Vec<u8>,
    },
    /// An account owned by another program (another loader, or not a program).
    Other { owner: Pubkey, executable: bool },
}

impl ProgramState {
    /// True when the deployed program is exactly `so` (with zero padding after it).
    pub fn runs(&self, so: &[u8]) -> bool {
        match self {
            ProgramState::Upgradeable { bytes, .. } => {
                bytes.len() >= so.len()
                    && &bytes[..so.len()] == so
                    && bytes[so.len()..].iter().all(|b| *b == 0)
            }
            _ => false,
        }
    }
}

/// Reads what is deployed at `program_id`.
pub fn program_state(chain: &impl Chain, program_id: &Pubkey) -> Result<ProgramState> {
    let Some(program) = chain.account(program_id)? else {
        return Ok(ProgramState::Missing);
    };
    if program.owner != loader::ID {
        return Ok(ProgramState::Other {
            owner: program.owner,
            executable: program.executable,
        });
    }
    let program_data = loader::get_program_data_address(program_id);
    // Program account: tag 2 (u32 LE) then the ProgramData address.
    if program.data.get(..4) != Some(&[2, 0, 0, 0][..])
        || program.data.get(4..36) != Some(program_data.as_ref())
    {
        return Err(ChainError::WrongAccount {
            address: *program_id,
            expected: "an upgradeable program (a buffer?)",
            owner: Some(program.owner),
        });
    }
    let data = chain
        .account(&program_data)?
        .ok_or(Missing::ProgramData {
            program: *program_id,
            program_data,
        })?
        .data;
    if data.len() < PROGRAM_DATA_METADATA || data[..4] != [3, 0, 0, 0] {
        return Err(ChainError::WrongAccount {
            address: program_data,
            expected: "a ProgramData account",
            owner: None,
        });
    }
    let slot = u64::from_le_bytes(
        data[4..12]
            .try_into()
            .map_err(|e| ChainError::decode("the ProgramData slot", Some(program_data), e))?,
    );
    let authority = match data[12] {
        0 => None,
        _ => Some(Pubkey::new_from_array(data[13..45].try_into().map_err(
            |e| ChainError::decode("the ProgramData authority", Some(program_data), e),
        )?)),
    };
    Ok(ProgramState::Upgradeable {
        authority,
        slot,
        max_len: data.len() - PROGRAM_DATA_METADATA,
        bytes: data[PROGRAM_DATA_METADATA..].to_vec(),
    })
}

/// What a deploy or upgrade sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployReport {
    pub program_id: Pubkey,
    /// The buffer the program was written to (closed by the deploy/upgrade).
    pub buffer: Pubkey,
    /// Program bytes written.
    pub bytes: usize,
    /// Bytes per write transaction.
    pub chunk: usize,
    /// Transactions sent in all (buffer creation, writes, deploy).
    pub transactions: usize,
}

/// Deploys `so` at `program`'s address with `authority` as upgrade authority and
/// room for `max_len` bytes (at least `so.len()`). `payer` pays rent and fees.
pub fn deploy(
    chain: &mut impl Chain,
    payer: &Keypair,
    program: &Keypair,
    authority: &Keypair,
    so: &[u8],
    max_len: usize,
) -> Result<DeployReport> {
    let program_id = program.pubkey();
    if program_state(chain, &program_id)? != ProgramState::Missing {
        return Err(DeployError::Exists(program_id).into());
    }
    let max_len = max_len.max(so.len());
    let (buffer, chunk, mut transactions) = write_buffer(chain, payer, authority, so)?;
    let program_lamports =
        chain.minimum_balance_for_rent_exemption(UpgradeableLoaderState::size_of_program())?;
    let instructions = loader::deploy_with_max_program_len(
        &payer.pubkey(),
        &program_id,
        &buffer,
        &authority.pubkey(),
        program_lamports,
        max_len,
    )
    .map_err(|e| ChainError::instruction("the deploy instruction", e))?;
    let sent = chain.send(&instructions, payer, &[program, authority]);
    transactions += 1;
    if let Err(e) = sent {
        close_buffer(chain, payer, authority, &buffer);
        return Err(e);
    }
    wait_for_next_slot(chain, &program_id);
    Ok(DeployReport {
        program_id,
        buffer,
        bytes: so.len(),
        chunk,
        transactions,
    })
}

/// Replaces the program at `program_id` by `so` (`authority` must be its upgrade
/// authority; `so` must fit the room deployed for it).
pub fn upgrade(
    chain: &mut impl Chain,
    payer: &Keypair,
    program_id: &Pubkey,
    authority: &Keypair,
    so: &[u8],
) -> Result<DeployReport> {
    match program_state(chain, program_id)? {
        ProgramState::Upgradeable {
            authority: Some(current),
            max_len,
            ..
        } => {
            if current != authority.pubkey() {
                return Err(DeployError::WrongAuthority {
                    program: *program_id,
                    current,
                    signer: authority.pubkey(),
                }
                .into());
            }
            if so.len() > max_len {
                return Err(DeployError::TooLarge {
                    program: *program_id,
                    bytes: so.len(),
                    room: max_len,
                }
                .into());
            }
        }
        ProgramState::Upgradeable {
            authority: None, ..
        } => return Err(DeployError::Immutable(*program_id).into()),
        ProgramState::Missing => return Err(DeployError::NotDeployed(*program_id).into()),
        ProgramState::Other { owner, .. } => {
            return Err(ChainError::WrongAccount {
                address: *program_id,
                expected: "a program of the upgradeable loader",
                owner: Some(owner),
            })
        }
    }
    let (buffer, chunk, mut transactions) = write_buffer(chain, payer, authority, so)?;
    let instruction = loader::upgrade(program_id, &buffer, &authority.pubkey(), &payer.pubkey());
    let sent = chain.send(&[instruction], payer, &[authority]);
    transactions += 1;
    if let Err(e) = sent {
        close_buffer(chain, payer, authority, &buffer);
        return Err(e);
    }
    wait_for_next_slot(chain, program_id);
    Ok(DeployReport {
        program_id: *program_id,
        buffer,
        bytes: so.len(),
        chunk,
        transactions,
    })
}

/// The most program bytes one write transaction carries, given who signs it.
pub fn write_chunk_size(chain: &impl Chain, payer: &Keypair, authority: &Keypair) -> Result<usize> {
    let probe = loader::write(&Pubkey::new_unique(), &authority.pubkey(), 0, Vec::new());
    let tx = sign_legacy(
        &chain.preamble(),
        &[probe],
        payer,
        &[authority],
        solana_hash::Hash::default(),
    )?;
    // The instruction's data length grows from a 1- to a 2-byte compact-u16 once it
    // carries the chunk.
    PACKET_DATA_SIZE
        .checked_sub(wire_size(&tx) + 1)
        .filter(|n| *n > 0)
        .ok_or_else(|| DeployError::NoRoomToWrite.into())
}

/// Creates a buffer (authority `authority`) and writes `so` into it; returns the
/// buffer, the chunk size and the transactions sent.
fn write_buffer(
    chain: &mut impl Chain,
    payer: &Keypair,
    authority: &Keypair,
    so: &[u8],
) -> Result<(Pubkey, usize, usize)> {
    if so.is_empty() {
        return Err(DeployError::EmptyProgram.into());
    }
    let buffer = Keypair::new();
    let lamports = chain
        .minimum_balance_for_rent_exemption(UpgradeableLoaderState::size_of_buffer(so.len()))?;
    let create = loader::create_buffer(
        &payer.pubkey(),
        &buffer.pubkey(),
        &authority.pubkey(),
        lamports,
        so.len(),
    )
    .map_err(|e| ChainError::instruction("the buffer instructions", e))?;
    chain.send(&create, payer, &[&buffer])?;
    let chunk = write_chunk_size(chain, payer, authority)?;
    let writes: Vec<Vec<Instruction>> = so
        .chunks(chunk)
        .enumerate()
        .map(|(i, bytes)| {
            let offset = u32::try_from(i * chunk).map_err(|_| DeployError::BeyondLoader)?;
            Ok(vec![loader::write(
                &buffer.pubkey(),
                &authority.pubkey(),
                offset,
                bytes.to_vec(),
            )])
        })
        .collect::<Result<_>>()?;
    let written = chain.send_all(&writes, payer, &[authority]);
    let written = match written {
        Ok(n) => n,
        Err(e) => {
            close_buffer(chain, payer, authority, &buffer.pubkey());
            return Err(e);
        }
    };
    // Check what landed before deploying from it.
    let landed = chain
        .account(&buffer.pubkey())?
        .map(|a| a.data)
        .unwrap_or_default();
    let meta = UpgradeableLoaderState::size_of_buffer_metadata();
    if landed.get(meta..) != Some(so) {
        close_buffer(chain, payer, authority, &buffer.pubkey());
        return Err(DeployError::BufferMismatch(buffer.pubkey()).into());
    }
    Ok((buffer.pubkey(), chunk, 1 + written))
}

/// A program (re)deployed in slot `s` runs from slot `s + 1`: waits (at most a few
/// seconds, for clusters whose clock does not move by itself) until the cluster is
/// past the slot the program was deployed in.
fn wait_for_next_slot(chain: &impl Chain, program_id: &Pubkey) {
    let Ok(ProgramState::Upgradeable { slot, .. }) = program_state(chain, program_id) else {
        return;
    };
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        match chain.clock() {
            Ok(clock) if clock.slot <= slot => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            _ => return,
        }
    }
}

/// Best effort: gives a failed deploy's buffer rent back to the payer.
fn close_buffer(chain: &mut impl Chain, payer: &Keypair, authority: &Keypair, buffer: &Pubkey) {
    let close = loader::close(buffer, &payer.pubkey(), &authority.pubkey());
    let _ = chain.send(&[close], payer, &[authority]);
}
